"""Prints one of the README's two set-up commands: `quickstart` or `test`.

The README marks each with an HTML comment (`<!-- quickstart-command -->`,
`<!-- test-command -->`) followed by a fenced code block; the block's lines, joined, are the
command. CI (.ci/run) and the tests (tests/test_readme.py) both read them from here.
"""

import os
import re
import sys

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'README.md')


def command(which: str, readme: str = README) -> str:
  text = open(readme).read()
  match = re.search(rf'<!-- {which}-command -->\s*```(?:bash|sh)?\n(.*?)```', text, re.S)
  if not match:
    raise SystemExit(f'README.md has no <!-- {which}-command --> block')
  lines = [line.rstrip('\\').strip() for line in match.group(1).strip().splitlines()]
  return ' '.join(line for line in lines if line)


if __name__ == '__main__':
  print(command(sys.argv[1] if len(sys.argv) > 1 else 'test'))
