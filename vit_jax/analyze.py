"""Look inside a trained run: embedding filters, position embeddings, attention distance and
rollout, Fourier analysis of feature maps, Hessian eigenvalues.

  python -m vit_jax.analyze --workdir=<run dir> --out=<dir> [--step=best|latest|N] \
      [--only=distance,fourier] [--images=64] [--hessian_batches=4]
  python -m vit_jax.analyze --sweep=<sweep dir> [--only=distance,fourier,hessian]

Writes `<name>.png` and the numbers behind it into `<out>/analysis.json`. Analyses that do not
apply to the run's model family (attention for a ResNet, filters for a hybrid) are reported as
skipped; asking for them by name with --only is an error. A later call with --only on the same
checkpoint and --out adds to analysis.json (the analyses not run again are kept, those of a
call on the same --out that finished meanwhile too); an --out that holds another checkpoint's
analyses is refused. With --sweep, the cheap analyses
(`vit_jax.analysis.run.SWEEP_ANALYSES`) run on every finished point, at the step its result
reports, into `<sweep>/analysis/<point>/`, and `<sweep>/analysis/sweep.png` + `sweep.csv` show
how they change with training-set size and depth; the sweep's REPORT.md then includes that
figure.
"""
from absl import app
from absl import flags

from vit_jax import checkpoint
from vit_jax import cli
from vit_jax.scaling import report
from vit_jax.analysis import run

_WORKDIR = flags.DEFINE_string('workdir', None, 'A training run directory (config.json and '
                               'checkpoints/).')
_SWEEP = flags.DEFINE_string('sweep', None, 'A sweep directory (results.csv): analyse every '
                             'finished point.')
_STEP = flags.DEFINE_string('step', 'latest', "With --workdir, the checkpoint to analyse: "
                            "'latest', 'best' (by validation accuracy) or a step number.")
_OUT = flags.DEFINE_string('out', None, 'Directory for the figures and analysis.json.')
_ONLY = flags.DEFINE_list('only', None,
                          f'Analyses to run (default: all that apply): {run.ANALYSES}.')
_IMAGES = flags.DEFINE_integer('images', 64, 'Evaluation-split images for the attention and '
                               'Fourier analyses.', lower_bound=1)
_HESSIAN_BATCHES = flags.DEFINE_integer('hessian_batches', 4, 'Mini-batches for the Hessian.',
                                        lower_bound=1)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if not (_WORKDIR.value and _OUT.value) and not _SWEEP.value:
    raise app.UsageError('--workdir and --out (one run) or --sweep (a sweep) are required.')
  if _SWEEP.value and (one_run := [f'--{name}' for name in ('workdir', 'out', 'step')
                                   if flags.FLAGS[name].present]):
    raise app.UsageError(f'{", ".join(one_run)}: for one run, not with --sweep (which '
                         "analyses every point's reported step into <sweep>/analysis/).")
  cli.setup_logging()
  try:
    if _SWEEP.value:
      summaries, left_out = run.analyze_sweep(_SWEEP.value, _ONLY.value, _IMAGES.value,
                                              _HESSIAN_BATCHES.value)
      report.write_report(_SWEEP.value)
      print(f'Analysed {len(summaries) - len(left_out)} points'
            + (f' (left out, their checkpoints/ deleted: {", ".join(left_out)})'
               if left_out else '')
            + f'; {_SWEEP.value}/analysis/sweep.png and sweep.csv written, {_SWEEP.value}/'
            'REPORT.md updated.')
      return
    results = run.analyze(_WORKDIR.value, _OUT.value, _ONLY.value, _IMAGES.value,
                          _HESSIAN_BATCHES.value, checkpoint.parse_step(_STEP.value))
  except cli.COMMAND_ERRORS as e:
    raise SystemExit(f'Error: {e}') from None
  done = [a for a in run.ANALYSES if a in results and a in (_ONLY.value or run.ANALYSES)]
  kept = [a for a in run.ANALYSES if a in results and a not in done]
  print(f'{results["model"]} ({results["family"]}) step {results["step"]}: {", ".join(done)} '
        f'written to {_OUT.value}'
        + (f'; kept from before: {", ".join(kept)}' if kept else '')
        + (f'; not applicable: {results["skipped"]}' if results['skipped'] else ''))


if __name__ == '__main__':
  cli.run(main)
