"""B-cos interpretable diffusion: config section, tokenizer, task, explanations and modes.

  config     the `config.bcos` section
  tokenizer  word tokenizer and the datasets' vocabularies
  task       BcosTask (the Task of the shared loop), generation, prompt adherence, loading
  explain    exact W(x)x explanations of steps and whole generations, reports and figures
  modes      `--mode=train`, `explain`, `evaluate` for model_type='bcos'
"""
