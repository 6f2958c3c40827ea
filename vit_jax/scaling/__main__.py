"""Writes a data-scaling sweep's report from its `results.csv`:

  python -m vit_jax.scaling <sweep workdir> [title]
"""
import os
import sys

from vit_jax import cli
from vit_jax.scaling import report, results, tables


def main(argv: list[str]) -> None:
  if len(argv) not in (2, 3):
    sys.exit(f'Error: expected a sweep workdir and an optional title, got {argv[1:]}.\n'
             'Usage: python -m vit_jax.scaling <sweep workdir> [title]')
  try:
    table = tables.results_table(results.read_results(os.path.join(argv[1], 'results.csv')))
    result = report.write_report(*argv[1:])
  except (ValueError, FileNotFoundError) as e:
    sys.exit(f'Error: {e}')
  print(table)
  for key, path in result.items():
    if key != 'findings':
      print(f'Wrote {path}')


if __name__ == '__main__':
  with cli.ends_on_ctrl_c():
    main(sys.argv)
