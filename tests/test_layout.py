"""The package's layers import only downwards, with no circle and no import hidden in a function.

  core  <  models, data  <  evaluate, interpret  <  tasks.patronus, tasks.bcos  <  config
        <  main, convert  <  experiment
A module may import a module of a lower layer, or of its own group (models, data, ...) as long
as no circle forms. Imports sit at a module's top; only optional heavy dependencies load
lazily inside functions (torch, TensorFlow/TFDS, clu's writers).
"""

import ast
import os

import pytest

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'patronus_jax')

# Group prefix -> layer; the longest matching prefix names a module's group.
LAYERS = {
    'patronus_jax': 0,  # the package __init__ (XLA flags only)
    'patronus_jax.core': 0,
    'patronus_jax.models': 1,
    'patronus_jax.data': 1,
    'patronus_jax.evaluate': 2,
    'patronus_jax.interpret': 2,
    'patronus_jax.tasks': 3,
    'patronus_jax.tasks.patronus': 3,
    'patronus_jax.tasks.bcos': 3,
    'patronus_jax.config': 4,
    'patronus_jax.main': 5,
    'patronus_jax.convert': 5,
    'patronus_jax.experiment': 6,  # what experiments/ scripts share; runs modes through main
}
# Optional heavy dependencies that may load inside a function.
LAZY_OK = ('torch', 'tensorflow', 'tensorflow_datasets', 'clu', 'importlib_resources', 'importlib.resources',
           'patronus_jax.data.tfds_compat', 'patronus_jax.data.shapes_builder')


def module_name(path: str) -> str:
  rel = os.path.relpath(path, os.path.dirname(ROOT))[:-3].replace(os.sep, '.')
  return rel[:-len('.__init__')] if rel.endswith('.__init__') else rel


def group(module: str) -> str:
  best = ''
  for prefix in LAYERS:
    if (module == prefix or module.startswith(prefix + '.')) and len(prefix) > len(best):
      best = prefix
  if not best:
    raise AssertionError(f'{module} belongs to no layer of tests/test_layout.py')
  return best


def imports(tree: ast.AST, module: str, in_function: bool):
  """(imported module, line) of every import, at the top level or inside functions."""
  out = []

  def visit(node, inside):
    for child in ast.iter_child_nodes(node):
      now = inside or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
      if isinstance(child, ast.Import) and now == in_function:
        out.extend((a.name, child.lineno) for a in child.names)
      elif isinstance(child, ast.ImportFrom) and now == in_function:
        base = child.module or ''
        if child.level:  # relative import
          base = '.'.join(module.split('.')[:-child.level] + ([base] if base else []))
        out.extend((f'{base}.{a.name}' if _is_module(f'{base}.{a.name}') else base, child.lineno)
                   for a in child.names)
      visit(child, now)

  visit(tree, False)
  return out


def _is_module(name: str) -> bool:
  if not name.startswith('patronus_jax'):
    return False
  path = os.path.join(os.path.dirname(ROOT), *name.split('.'))
  return os.path.exists(path + '.py') or os.path.isdir(path)


def package_modules() -> dict[str, ast.AST]:
  out = {}
  for directory, _, files in os.walk(ROOT):
    for name in files:
      if name.endswith('.py'):
        path = os.path.join(directory, name)
        with open(path) as f:
          out[module_name(path)] = ast.parse(f.read(), path)
  return out


def edges(modules: dict[str, ast.AST]) -> dict[str, set[str]]:
  graph = {m: set() for m in modules}
  for m, tree in modules.items():
    for target, _ in imports(tree, m, in_function=False):
      if target.startswith('patronus_jax') and target in modules and target != m:
        graph[m].add(target)
  return graph


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
  bad = []
  for m, targets in graph.items():
    for t in targets:
      gm, gt = group(m), group(t)
      if t == 'patronus_jax' or gm == gt:
        continue
      if LAYERS[gt] >= LAYERS[gm]:
        bad.append(f'{m} (layer {LAYERS[gm]}) imports {t} (layer {LAYERS[gt]})')
  return sorted(bad)


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
  found, state, stack = [], {}, []

  def dfs(m):
    state[m] = 1
    stack.append(m)
    for t in sorted(graph[m]):
      if state.get(t) == 1:
        found.append(stack[stack.index(t):] + [t])
      elif t not in state:
        dfs(t)
    stack.pop()
    state[m] = 2

  for m in sorted(graph):
    if m not in state:
      dfs(m)
  return found


def hidden_imports(modules: dict[str, ast.AST]) -> list[str]:
  bad = []
  for m, tree in modules.items():
    for target, line in imports(tree, m, in_function=True):
      if not any(target == ok or target.startswith(ok + '.') for ok in LAZY_OK):
        bad.append(f'{m}:{line} imports {target} inside a function')
  return sorted(bad)


@pytest.fixture(scope='module')
def modules():
  return package_modules()


def test_every_module_has_a_layer(modules):
  for m in modules:
    group(m)


def test_imports_point_down(modules):
  assert upward_imports(edges(modules)) == []


def test_no_import_circle(modules):
  assert circles(edges(modules)) == []


def test_no_import_inside_a_function(modules):
  assert hidden_imports(modules) == []


def test_the_checks_find_what_they_guard():
  """Each check flags a planted violation (so an empty answer above means something)."""
  planted = {
      'patronus_jax.core.a': ast.parse('from patronus_jax.models import b\n'),
      'patronus_jax.models.b': ast.parse('from patronus_jax.core import a\n'
                                         'def f():\n  from patronus_jax.core import a\n'),
      'patronus_jax.models': ast.parse(''),
      'patronus_jax.core': ast.parse(''),
  }
  graph = {'patronus_jax.core.a': {'patronus_jax.models.b'}, 'patronus_jax.models.b': {'patronus_jax.core.a'}}
  assert upward_imports(graph) == ['patronus_jax.core.a (layer 0) imports patronus_jax.models.b (layer 1)']
  assert circles(graph) == [['patronus_jax.core.a', 'patronus_jax.models.b', 'patronus_jax.core.a']]
  assert hidden_imports(planted) == ['patronus_jax.models.b:3 imports patronus_jax.core inside a function']
