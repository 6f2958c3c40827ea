"""Converts an image-folder tree or archive into ArrayRecord shards (see `records`), once.

  python -m vit_jax.data.prepare --src=<directory, .tar or .tar.gz> --out=<directory> \
      [--splits=train,val] [--workers=8] [--shard_size=1024] [--corrupt_images=error|skip]

Layout of the source: `[<root>/]<split>/<class>/<image>` (e.g. ImageNet's `train/<wnid>/*.JPEG`
and `val/<wnid>/*.JPEG`); every split must have the same class folders. --splits prepares those
splits alone (the others, e.g. ImageNet's unlabelled `test/`, are not read). Images keep their
encoded bytes (any size, JPEG, PNG, ...); each is decoded once here to refuse (or with
--corrupt_images=skip, leave out and list) files that are not images.

Shards are written in parallel worker processes, each to a temporary file renamed when
complete, and `metadata.json` last: a killed run leaves no file that looks finished, and
rerunning the same command keeps the shards already done. A finished `<out>` gains the splits
of --splits it lacks (say val/, prepared after train/), its others left as they are. A
`.tar.gz` is first decompressed to `<out>/.source-<digest>.tar` (random access for the workers;
decompressed again when the archive changes), removed at the end. Both paths are local (or a
mounted bucket): ArrayRecord shards are local files.
"""
import concurrent.futures
import glob
import gzip
import hashlib
import io
import multiprocessing
import os
import posixpath
import shutil
import sys
import tarfile
from typing import Sequence

from absl import app
from absl import flags
from absl import logging
import numpy as np
from PIL import Image

from vit_jax import cli
from vit_jax import files
from vit_jax.data import folder, footprint, records
from vit_jax.data import worker_signals

# Where an item's bytes are: ('dir', root) + relative path, or ('tar', archive) + (offset, size).
Reader = tuple[str, str]
Item = tuple[str, int, tuple]  # (name, label, location)


def _read(reader: Reader, location: tuple) -> bytes:
  kind, path = reader
  if kind == 'dir':
    with open(os.path.join(path, location[0]), 'rb') as f:
      return f.read()
  with open(path, 'rb') as f:
    f.seek(location[0])
    return f.read(location[1])


def _list_source(src: str, out: str) -> tuple[Reader, dict[str, tuple]]:
  """(reader, {relative file name: location}) of a directory (without `out`, should it lie
  inside: a rerun must not read its own shards as images) or (decompressed) tar archive."""
  if os.path.isdir(src):
    found, inside = {}, os.path.realpath(out)
    for folder, subfolders, names in files.walk(src):
      subfolders[:] = [d for d in subfolders
                       if os.path.realpath(os.path.join(folder, d)) != inside]
      rel = os.path.relpath(folder, src).replace(os.sep, '/')
      for n in names:
        name = n if rel == '.' else f'{rel}/{n}'
        found[name] = (name,)
    return ('dir', src), found
  tar_path = src
  try:
    with open(src, 'rb') as f:
      gzipped = f.read(2) == b'\x1f\x8b'
    if gzipped:  # random access needs the plain tar: decompress once (atomically)
      tar_path = _decompressed(src, out)
      if not os.path.isfile(tar_path):
        for stale in os.listdir(out):  # of an earlier version of the archive
          if stale.startswith('.source-') and stale.endswith('.tar'):
            os.remove(os.path.join(out, stale))
        logging.info('Decompressing %s to %s ...', src, tar_path)
        with gzip.open(src, 'rb') as g, files.atomic_open(tar_path, 'wb') as f:
          shutil.copyfileobj(g, f, 1 << 24)
    found = {}
    with tarfile.open(tar_path, 'r:') as tar:
      for member in tar:
        if member.isfile():
          name = posixpath.normpath(member.name).lstrip('/')
          found[name] = (member.offset_data, member.size)
  except (tarfile.TarError, OSError, EOFError) as e:
    raise ValueError(f'--src={src} is neither a directory nor a readable .tar / .tar.gz '
                     f'archive: {e}') from e
  return ('tar', tar_path), found


def _decompressed(src: str, out: str) -> str:
  """Where a `.tar.gz` source is decompressed: `<out>/.source-<digest>.tar`, the digest of
  its real path, size and modification time, so that a rerun after the archive changed (a
  layout fixed, images added) never reads the earlier one's."""
  stat = os.stat(src)
  key = repr((os.path.realpath(src), stat.st_size, stat.st_mtime_ns))
  return os.path.join(out, f'.source-{hashlib.sha256(key.encode()).hexdigest()[:12]}.tar')


def plan_splits(src: str, names: Sequence[str], splits: Sequence[str] | None = None
                ) -> tuple[tuple[str, ...], dict[str, list]]:
  """(class names, {split: [(file name, label), ...] sorted by class then name}) from the
  files' paths `[<root>/]<split>/<class>/<image>` (file managers' files are left out:
  `folder.is_metadata`), of the `splits` named (None: all)."""
  names = [n for n in names if not folder.is_metadata(n)]
  if not names:
    raise ValueError(f'{src} holds no files; it must hold images as '
                     '[<root>/]<split>/<class>/<image>.')
  if splits:  # a path's split: its first folder or, under one root folder, its second
    tops = {n.split('/')[0] for n in names if '/' in n}
    root = len(tops) == 1 and not tops & set(splits)
    split_of = lambda n: n.split('/')[root] if n.count('/') > root else None
    present = {split_of(n) for n in names} - {None}
    if missing := [s for s in splits if s not in present]:
      raise ValueError(f'--splits names {missing}, not a split folder of {src}; its split '
                       f'folders: {sorted(present)[:10]}.')
    names = [n for n in names if split_of(n) in splits]
  depths = {n.count('/') for n in names}
  roots = {n.split('/')[0] for n in names}
  if depths == {2}:
    skip = 0
  elif depths == {3} and len(roots) == 1:
    skip = 1
  else:
    layout = f'{src} must hold images as [<root>/]<split>/<class>/<image>'
    above = sorted(n for n in names if n.count('/') < max(depths))
    if above:
      folders = sorted({posixpath.dirname(n) or '.' for n in above})
      raise ValueError(f'{layout}; {len(above)} file(s) lie above the class folders, in '
                       f"{folders[:3]} (e.g. '{above[0]}'): leave an unlabelled split such as "
                       "ImageNet's test/ out (--splits=train,val, or move it out of --src), "
                       'or put its files into class folders.')
    raise ValueError(f'{layout}, under at most one <root> folder; found e.g. '
                     f'{sorted(names)[:3]}.')
  by_split = {}
  for name in names:
    split, cls, _ = name.split('/')[skip:]
    by_split.setdefault(split, {}).setdefault(cls, []).append(name)
  classes = {split: sorted(c) for split, c in by_split.items()}
  reference = max(classes, key=lambda s: len(classes[s]))
  for split, names_ in classes.items():
    if names_ != classes[reference]:
      raise ValueError(
          f'The class folders of {src} differ between splits: {split} has {len(names_)} '
          f'classes, {reference} {len(classes[reference])}; only in {reference}: '
          f'{sorted(set(classes[reference]) - set(names_))[:5]}, only in {split}: '
          f'{sorted(set(names_) - set(classes[reference]))[:5]}.')
  class_names = tuple(classes[reference])
  plan = {split: [(name, label) for label, cls in enumerate(class_names)
                  for name in sorted(folders[cls])]
          for split, folders in sorted(by_split.items())}
  return class_names, plan


def _check_image(data: bytes) -> None:
  """Raises what Pillow raises when `data` is not a decodable image."""
  with Image.open(io.BytesIO(data)) as image:
    image.load()


def _write_shard(job: tuple) -> tuple[int, int]:
  """Writes one shard (in a worker): validates every image, writes the records to a
  temporary file renamed when complete, then a sidecar JSON with the kept labels and the
  skipped files. Returns (examples handled, shard index)."""
  out, split, index, count, items, reader, skip_corrupt, digest = job
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
  final = os.path.join(out, records.shard_name(split, index, count))
  tmp = final + '.tmp'
  labels, skipped = [], []
  writer = array_record_module.ArrayRecordWriter(tmp, 'group_size:1')
  try:
    for name, label, location in items:
      data = _read(reader, location)
      try:
        _check_image(data)
      except (OSError, SyntaxError, ValueError) as e:  # what Pillow raises for broken files
        if not skip_corrupt:
          raise ValueError(f'Cannot decode the image {name} of {reader[1]}: '
                           f'{folder.pillow_error(e)}; pass '
                           '--corrupt_images=skip to leave such files out.') from None
        skipped.append(name)
        continue
      writer.write(data)
      labels.append(label)
  finally:
    writer.close()
  os.replace(tmp, final)
  files.write_json(final + '.json', {'digest': digest, 'labels': labels, 'skipped': skipped})
  return len(items), index


def _digest(items: list[Item]) -> str:
  return hashlib.sha256(repr([(n, l) for n, l, _ in items]).encode()).hexdigest()


def _done(path: str, digest: str) -> dict | None:
  """The sidecar of a finished shard for the same items, else None."""
  try:
    side = files.read_json(path + '.json')
  except (OSError, ValueError):
    return None
  return side if side.get('digest') == digest and os.path.isfile(path) else None


def prepare(src: str, out: str, *, splits: Sequence[str] | None = None, workers: int = 0,
            shard_size: int = 1024, corrupt_images: str = 'error', progress: bool = True) -> dict:
  """Writes the prepared dataset of `src` (its `splits`, None: all) into `out` (see the module
  docstring); returns its metadata. A finished `out` is left as it is (with a warning if it was
  prepared from another `src`, an error if it then lacks one of `splits`); the splits of
  `splits` that a finished `out` from the same `src` lacks are added to it (their class
  folders must be its classes); an interrupted run is completed. workers=0: one per CPU."""
  if corrupt_images not in ('error', 'skip'):
    raise ValueError(f"--corrupt_images={corrupt_images!r} must be 'error' or 'skip'.")
  if shard_size < 1:
    raise ValueError(f'--shard_size={shard_size} must be positive.')
  for flag, path in (('--src', src), ('--out', out)):
    if not files.is_local(path):
      raise ValueError(f'{flag}={path}: prepare reads and writes local folders (ArrayRecord '
                       'shards are written and read as local files); prepare on a local disk '
                       'and copy the result where the hosts read it, or use a mounted bucket '
                       '(gcsfuse) path.')
  source = os.path.realpath(src)
  meta = None
  if os.path.isfile(os.path.join(out, records.METADATA)):
    meta = records.read_metadata(out)
    missing = [s for s in splits or () if s not in meta['splits']]
    if meta.get('source', source) != source:  # (no 'source': prepared before it was recorded)
      if missing:
        raise ValueError(f'{out} is already prepared from {meta["source"]}, with the splits '
                         f'{list(meta["splits"])}, not {missing}: remove it (or choose another '
                         f'--out) to prepare --splits={",".join(splits)} from {src}.')
      # Not an error: a copy made on another host, or a job script that always prepares first.
      logging.warning('%s holds the dataset prepared from %s, not from --src=%s; it is left as '
                      'it is (remove it to prepare %s).', out, meta['source'], src, src)
      return meta
    if not missing:
      logging.info('%s is already prepared from %s; nothing to do (remove it to prepare it '
                   'again after the images changed).', out, src)
      return meta
    logging.info('%s is prepared from %s with the splits %s; adding %s.', out, src,
                 list(meta['splits']), missing)
    splits = missing
  if not os.path.isdir(src) and not os.path.isfile(src):  # refused before `out` is made
    plain = src.removeprefix('folder:')  # config.dataset's form of the same path
    hint = f' (--src takes the path alone: --src={plain})' if plain != src else ''
    raise FileNotFoundError(f'--src={src} does not exist{hint}.')
  with files.exclusive_lock(out, 'prepare run'):
    reader, found = _list_source(src, out)
    class_names, plan = plan_splits(src, list(found), splits)
    if meta is None:
      meta = {'format': records.FORMAT, 'source': source, 'class_names': list(class_names),
              'splits': {}}
    elif list(class_names) != meta['class_names']:
      ours, theirs = set(meta['class_names']), set(class_names)
      raise ValueError(
          f'The class folders of {list(plan)} in {src} differ from the classes {out} was '
          f'prepared with: only in {out}: {sorted(ours - theirs)[:5]}, only in {list(plan)}: '
          f'{sorted(theirs - ours)[:5]}; remove {out} (or choose another --out) to prepare '
          'every split together.')
    jobs, sizes = [], {}
    for split, examples in plan.items():
      count = -(-len(examples) // shard_size)
      sizes[split] = count
      for index in range(count):
        items = [(n, l, found[n]) for n, l in examples[index * shard_size:][:shard_size]]
        jobs.append((out, split, index, count, items, reader, corrupt_images == 'skip',
                     _digest(items)))
    todo = [j for j in jobs
            if not _done(os.path.join(out, records.shard_name(*j[1:4])), j[7])]
    total = sum(len(j[4]) for j in todo)
    logging.info('%s: %d images in %s; %d of %d shards to write.', src,
                 sum(map(len, plan.values())), {s: len(e) for s, e in plan.items()}, len(todo),
                 len(jobs))
    _run_jobs(todo, total, workers or os.cpu_count() or 1, progress)
    for split in plan:
      shards = [records.shard_name(split, i, sizes[split]) for i in range(sizes[split])]
      sides = [files.read_json(os.path.join(out, s) + '.json') for s in shards]
      labels = np.array([l for side in sides for l in side['labels']], np.int32)
      with files.atomic_open(records.labels_file(out, split), 'wb') as f:
        np.save(f, labels, allow_pickle=False)
      skipped = [s for side in sides for s in side['skipped']]
      if skipped:
        logging.warning('Left out %d image(s) of the %s split that cannot be decoded: %s%s',
                        len(skipped), split, ', '.join(skipped[:5]),
                        ' ...' if len(skipped) > 5 else '')
      meta['splits'][split] = {'num_examples': len(labels), 'shards': shards, 'skipped': skipped}
    files.write_json(os.path.join(out, records.METADATA), meta)
    for split in plan:
      for i in range(sizes[split]):
        os.remove(os.path.join(out, records.shard_name(split, i, sizes[split])) + '.json')
    if reader[1] != src:  # decompressed here
      os.remove(reader[1])
  return meta


def _run_jobs(jobs: list, total: int, workers: int, progress: bool) -> None:
  """Runs `_write_shard` over `jobs` in `workers` processes, with a progress bar. On an error
  or Ctrl-C the shards not started are cancelled and the ones being written finish (stopping
  workers mid-write could leave a lock of the result queue held by a dead process and hang
  the stop). A worker that dies (killed, out of memory) ends the run with an OSError; the
  finished shards are kept."""
  import tqdm  # pylint: disable=g-import-not-at-top
  bar = tqdm.tqdm(total=total, unit='img', disable=not progress, file=sys.stderr)
  executor = None
  if workers == 1 or len(jobs) <= 1:
    results = map(_write_shard, jobs)
  else:
    with worker_signals.ctrl_c_blocked():  # Ctrl-C is this process's to handle (below)
      executor = concurrent.futures.ProcessPoolExecutor(
          min(workers, len(jobs)), mp_context=multiprocessing.get_context('spawn'),
          initializer=worker_signals.init_worker, initargs=(os.getpid(),))
      futures = [executor.submit(_write_shard, job) for job in jobs]  # workers start here
    results = (future.result() for future in concurrent.futures.as_completed(futures))
  try:
    for done, _ in results:
      bar.update(done)
  except concurrent.futures.BrokenExecutor:  # a worker died
    raise OSError('A worker process died while writing shards (killed, or out of memory: '
                  'try fewer --workers); the finished shards are kept, rerun the same '
                  'command to continue.') from None
  finally:
    bar.close()
    if executor is not None:
      executor.shutdown(cancel_futures=True)


FLAGS = flags.FLAGS
flags.DEFINE_string('src', None, 'Image-folder directory, .tar or .tar.gz archive.')
flags.DEFINE_string('out', None, 'Directory to write the prepared dataset into.')
flags.DEFINE_list('splits', None, 'The split folders to prepare (default: all), e.g. '
                  'train,val to leave out an unlabelled test/.')
flags.DEFINE_integer('workers', 0, 'Worker processes (0: one per CPU).', lower_bound=0)
flags.DEFINE_integer('shard_size', 1024, 'Images per ArrayRecord shard.')
flags.DEFINE_enum('corrupt_images', 'error', ['error', 'skip'],
                  'A file that is not a decodable image: stop with an error, or leave it out.')


def _kept_copy(out: str) -> str:
  """The sentence naming the decompressed `.tar.gz` a failed run left in `out` for the rerun
  ('' if none): as large as the archive's contents, so the user learns of it."""
  kept = glob.glob(os.path.join(glob.escape(out), '.source-*.tar'))
  if not kept:
    return ''
  return (f' Kept for the rerun into this --out: {kept[0]} '
          f'({footprint.size(os.path.getsize(kept[0]))}, the decompressed --src); remove it if '
          'there will be none.')


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if not FLAGS.src or not FLAGS.out:
    raise app.UsageError('--src and --out are required.')
  logging.set_verbosity(logging.INFO)
  try:
    meta = prepare(FLAGS.src, FLAGS.out, splits=FLAGS.splits, workers=FLAGS.workers,
                   shard_size=FLAGS.shard_size, corrupt_images=FLAGS.corrupt_images)
  except cli.COMMAND_ERRORS as e:
    sys.exit(f'Error: {e}{_kept_copy(FLAGS.out)}')
  print(f'{FLAGS.out}: ' + ', '.join(f'{s} {v["num_examples"]} images'
                                     for s, v in meta['splits'].items())
        + f', {len(meta["class_names"])} classes'
        + (f', prepared from {meta["source"]}.' if 'source' in meta else '.'))


if __name__ == '__main__':
  cli.run(main, 'Stopped by Ctrl-C; rerun the same command to continue (finished shards are '
                'kept).')
