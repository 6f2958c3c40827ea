"""Fourier analysis of feature maps (Park & Kim, ICLR 2022, Figures 2 and 8)."""
import numpy as np


def tokens_to_maps(tokens: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
  """(B, N, D) tokens -> (B, h, w, D) maps of the last h*w (patch) tokens."""
  h, w = grid
  return np.asarray(tokens)[:, -h * w:].reshape(tokens.shape[0], h, w, tokens.shape[-1])


def relative_log_amplitude(maps: np.ndarray) -> np.ndarray:
  """Log amplitude of the 2D Fourier transform relative to frequency 0, read along the half
  diagonal from 0 to pi.

  The transform is taken over the spatial axes of each map and channel, shifted so frequency
  0 is in the centre, its log amplitude averaged over images and channels, and the value at
  frequency 0 subtracted.

  Args:
    maps: (B, H, W, C) with H == W.

  Returns:
    (H // 2 + 1,): relative log amplitude at frequencies 0, 2pi/H, ..., 2pi (H // 2) / H, which
    is pi for even H (the last entry is the paper's "delta log amplitude at pi": near 0 for
    high-pass features, strongly negative for low-pass ones).
  """
  maps = np.asarray(maps, np.float64)
  if maps.shape[1] != maps.shape[2]:
    raise ValueError(f'Feature maps must be square, got {maps.shape[1]}x{maps.shape[2]}.')
  spectrum = np.fft.fftshift(np.fft.fft2(maps, axes=(1, 2)), axes=(1, 2))
  log_amp = np.log(np.abs(spectrum) + 1e-12).mean(axis=(0, 3))  # (H, W)
  size = maps.shape[1]
  centre = size // 2
  # From the centre (frequency 0) towards index 0 along the diagonal; index 0 holds -pi (= pi)
  diagonal = np.array([log_amp[centre - i, centre - i] for i in range(centre + 1)])
  return diagonal - diagonal[0]
