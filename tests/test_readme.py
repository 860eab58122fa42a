"""The README's two set-up commands are what CI runs, and they name real things."""

import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, '.ci'))

import readme_command  # noqa: E402  (.ci/ is put on sys.path just above)


def test_ci_runs_the_readme_test_command():
  ci = open(os.path.join(ROOT, '.ci', 'run')).read()
  assert 'python .ci/readme_command.py test' in ci and 'python3 -m venv' in ci
  out = subprocess.run([sys.executable, os.path.join(ROOT, '.ci', 'readme_command.py'), 'test'],
                       capture_output=True, text=True, check=True).stdout.strip()
  assert out == readme_command.command('test')
  assert out.startswith('pip install -e ".[test]"') and 'pytest' in out


def test_quickstart_command_names_existing_files():
  cmd = readme_command.command('quickstart')
  assert cmd.startswith('pip install -e .') and 'python -m patronus_jax.main' in cmd
  config = re.search(r'--config=(\S+)', cmd).group(1)
  assert os.path.exists(os.path.join(ROOT, config.split(':')[0]))
  assert '--workdir=' in cmd


def test_readme_links_exist():
  text = open(os.path.join(ROOT, 'README.md')).read()
  for target in re.findall(r'\]\(((?!http)[^)#]+)\)', text):
    assert os.path.exists(os.path.join(ROOT, target)), target
