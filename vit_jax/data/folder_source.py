"""An image-folder tree, `.tar` or `.tar.gz` read in place as a record source (small trees of
images of any size, or too big to decode whole: a streamed 'folder:' dataset). Large trees are
better prepared once with `python -m vit_jax.data.prepare`, which a run then opens without
walking the images."""
from etils import epath
import numpy as np

from vit_jax import files
from vit_jax.data import folder


class FolderSource:
  """`source[i]` -> (the file's bytes, label) of split `split` of the layout
  `<root>/{train,test}/<class>/<image>`, images ordered by class then name. A directory
  (local or on an object store) is listed once here and read file by file; an archive is read
  once and kept in memory."""

  def __init__(self, path: str, split: str):
    folder.require(path)
    self.directory, self.split = path, split
    if files.isdir(path):
      dirs, names, _ = folder.list_folder(path)
      self._blobs = None
    else:
      dirs, names, read = folder.list_archive(path, split)
      self._blobs = read.__self__  # {name: bytes} of this split's files
    self.paths, labels, self.class_names = folder.image_paths(path, split, dirs, names)
    self.labels = np.asarray(labels, np.int32)
    self.skipped = ()

  def __len__(self) -> int:
    return len(self.paths)

  def __getitem__(self, index: int) -> tuple[bytes, int]:
    name = self.paths[int(index)]
    if self._blobs is not None:
      return self._blobs[name], int(self.labels[index])
    return epath.Path(self.directory, name).read_bytes(), int(self.labels[index])
