"""Writes a data-scaling sweep's report from its `results.csv`:

  python -m vit_jax.scaling <sweep workdir> [title]
  python -m vit_jax.scaling --workdir=<sweep workdir> [--title=<title>]   (the same)

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
  parser.add_argument('workdir', nargs='?', help='the sweep workdir (holds results.csv)')
  parser.add_argument('title', nargs='?', help="the report's title")
  parser.add_argument('--workdir', dest='workdir_flag', metavar='WORKDIR',
                      help='the sweep workdir, as the other commands take it')
  parser.add_argument('--title', dest='title_flag', metavar='TITLE', help="the report's title")
  args = parser.parse_args(argv[1:])
  for name in ('workdir', 'title'):
    if getattr(args, name) is not None and getattr(args, f'{name}_flag') is not None:
      parser.error(f'the {name} is given twice: as an argument and as --{name}.')
  workdir, title = args.workdir or args.workdir_flag, args.title or args.title_flag
  if workdir is None:
    parser.error('the sweep workdir is required: python -m vit_jax.scaling <dir> (or '
                 '--workdir=<dir>).')
  try:
    rows = results.read_results(os.path.join(workdir, 'results.csv'))
    result = report.write_report(workdir, title)
  except cli.COMMAND_ERRORS as e:
    sys.exit(f'Error: {e}')
  print(tables.results_table(rows))
  for key, path in result.items():
    if key != 'findings':
      print(f'Wrote {path}')


if __name__ == '__main__':
  with cli.ends_on_ctrl_c():
    main(sys.argv)
