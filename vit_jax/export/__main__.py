"""Export a run's checkpoint to another framework, verified by running it there.

  python -m vit_jax.export --workdir=<run dir> [--step=best|latest|N] --format=<hf|timm|onnx|npz> --out=<dir>

Writes `<out>/` (see `vit_jax.export` and the README's Export section for what each format
holds and which models it supports) and `<out>/export.json` with the verification: the largest
absolute logit difference between the exported model and the JAX model on the run's test
images and random inputs. Exits non-zero, writing nothing, if that exceeds 1e-4 or the model
does not fit the format.
"""
from absl import app
from absl import flags

from vit_jax import checkpoint
from vit_jax import cli
from vit_jax import export

_WORKDIR = flags.DEFINE_string('workdir', None, 'A training run directory (config.json and '
                               'checkpoints/).', required=True)
_STEP = flags.DEFINE_string('step', 'latest', "Checkpoint to export: 'latest', 'best' (by "
                            "validation accuracy) or a step number.")
_FORMAT = flags.DEFINE_enum('format', None, export.FORMATS, 'Target format.', required=True)
_OUT = flags.DEFINE_string('out', None, 'Folder to create with the export (local or gs://...).',
                           required=True)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  cli.setup_logging()
  try:
    manifest = export.export(_WORKDIR.value, _FORMAT.value, _OUT.value,
                             checkpoint.parse_step(_STEP.value))
  except (*cli.COMMAND_ERRORS, export.VerificationError) as e:
    raise SystemExit(f'Error: {e}') from None
  check = manifest['verification']
  print(f'Exported {manifest["model"]} (step {manifest["step"]}) as {_FORMAT.value} to '
        f'{_OUT.value}: {", ".join(manifest["files"])}; largest absolute logit difference '
        f'{max(check["max_abs_diff"].values()):.3g} <= {check["tolerance"]:g} '
        f'({check["verified_with"]}).')


if __name__ == '__main__':
  cli.run(main)
