"""Writes a data-scaling sweep's report from its `results.csv`:

  python -m vit_jax.scaling <sweep workdir> [title]

Prints the results table and writes the figures, REPORT.md and report.json into the sweep
workdir (the title defaults to the sweep's preset name).
"""
import argparse
import os
import sys

from vit_jax import cli
from vit_jax.scaling import report, results, tables


def main(argv: list[str]) -> None:
  parser = cli.ArgumentParser(prog='python -m vit_jax.scaling', description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('workdir', help='the sweep workdir (holds results.csv)')
  parser.add_argument('title', nargs='?', help="the report's title")
  args = parser.parse_args(argv[1:])
  try:
    rows = results.read_results(os.path.join(args.workdir, 'results.csv'))
    result = report.write_report(args.workdir, args.title)
  except cli.COMMAND_ERRORS as e:
    sys.exit(f'Error: {e}')
  print(tables.results_table(rows))
  for key, path in result.items():
    if key != 'findings':
      print(f'Wrote {path}')


if __name__ == '__main__':
  with cli.ends_on_ctrl_c():
    main(sys.argv)
