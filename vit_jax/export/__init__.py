"""Export a trained model to Hugging Face transformers, timm, ONNX or the original npz format,
and import Hugging Face and timm ViT weights (the library behind `python -m vit_jax.export`).

  export(workdir, 'hf', out)                    # a run's latest checkpoint
  export_source(Source.from_model(...), 'onnx', out)   # any registry model and parameters

Every export is written into a temporary folder (beside a local `out`; on this machine for an
object-store `out` such as `gs://bucket/dir`), then loaded by the other framework's own loader
(transformers, timm, onnxruntime, our npz loader) and run on real images of the run's
evaluation split and random inputs; only when its logits match the JAX model's
(`verify.TOLERANCE`) is the folder renamed to `out`, with `export.json` recording the check.
An object store has no folder rename: each file is uploaded (atomically, one object each),
`export.json` last, so a folder holding `export.json` is complete; a failed upload removes
what it uploaded.
Import: `hf.load(folder)`, `hf.import_state_dict(state, config)`, `timm.load(folder)`,
`timm.import_state_dict(state, num_heads=...)` return (our model, params) for ViTs.
"""
import importlib
import os
import shutil
import tempfile

from etils import epath

from vit_jax import checkpoint, files
from vit_jax.export.source import Source, UnsupportedError
from vit_jax.export.verify import VerificationError, compare

FORMATS = ('hf', 'timm', 'onnx', 'npz')


def format_module(fmt: str):
  """The module implementing `fmt` (imported on demand: torch and onnx are heavy)."""
  if fmt not in FORMATS:
    raise ValueError(f'--format={fmt!r} is not one of {FORMATS}.')
  return importlib.import_module(f'vit_jax.export.{fmt}')


def export_source(source: Source, fmt: str, out: str) -> dict:
  """Writes `source` in format `fmt` to the folder `out` (local or `gs://...`), verified; returns
  the manifest (also `out/export.json`).

  Raises:
    ValueError: unknown format; UnsupportedError (a ValueError) naming the model and format.
    FileExistsError: `out` exists and is not empty.
    VerificationError: the exported model's logits differ from the JAX model's; `out` is then
      not created.
  """
  module = format_module(fmt)
  module.check(source)
  target = epath.Path(out)
  if target.is_file() or target.is_dir() and any(target.iterdir()):
    raise FileExistsError(f'--out={out} already exists and is not empty; remove it or choose '
                          'another folder.')
  if files.is_local(out):
    parent = os.path.dirname(os.path.abspath(out))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=f'.{os.path.basename(os.path.abspath(out))}.',
                           suffix='.tmp')
  else:
    tmp = tempfile.mkdtemp(prefix='vit_jax_export.', suffix='.tmp')
  try:
    module.write(source, tmp)
    run, how = module.runner(source, tmp)
    manifest = {
        'format': fmt, 'model': source.name, 'family': source.family,
        'workdir': source.workdir, 'step': source.step, 'image_size': source.image_size,
        'channels': source.channels, 'num_classes': source.num_classes,
        'class_names': source.class_names, 'files': sorted(os.listdir(tmp)),
        'verification': compare(source, fmt, run, how)}
    files.write_json(os.path.join(tmp, 'export.json'), manifest)
    if files.is_local(out):
      os.chmod(tmp, 0o755)
      if os.path.isdir(out):
        os.rmdir(out)
      os.replace(tmp, out)
    else:
      _upload(tmp, target)
  finally:  # gone already once renamed into place
    shutil.rmtree(tmp, ignore_errors=True)
  return manifest


def _upload(folder: str, target: epath.Path) -> None:
  """Uploads the files of the local `folder` into the object-store folder `target`,
  `export.json` last; on failure removes the objects it uploaded."""
  names = sorted(os.listdir(folder), key=lambda name: name == 'export.json')
  done = []
  try:
    for name in names:
      with open(os.path.join(folder, name), 'rb') as source, (target / name).open('wb') as f:
        shutil.copyfileobj(source, f)
      done.append(target / name)
  except BaseException:
    for path in done:
      path.unlink(missing_ok=True)
    raise


def export(workdir: str, fmt: str, out: str, step: checkpoint.Step = None) -> dict:
  """Exports checkpoint `step` ('latest' or None, 'best', a number) of the run in `workdir`; see
  `export_source`."""
  format_module(fmt)  # an unknown format fails before the run is read
  return export_source(Source.from_run(workdir, step), fmt, out)


__all__ = ['FORMATS', 'Source', 'UnsupportedError', 'VerificationError', 'export',
           'export_source', 'format_module']
