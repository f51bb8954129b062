"""Peak memory of decoding one picture, by shape: `python -m loadtests.decode_memory`.

Each measurement runs in a fresh Python process: it reads the file, then decodes it as the
service does (service.imaging.picture_and_input for a model input), and reports how much its
peak resident set (getrusage's ru_maxrss, which counts numpy's and Pillow's allocations alike)
grew beyond what it was before decoding. Pictures are generated PNGs of zeros (a few kB
that decode to many megapixels): very wide, very tall and square, in grayscale and in colour.
docs/reliability.md holds the figures and what they say.
"""

from __future__ import annotations

import argparse
import json
import struct
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# The child: the file's bytes in memory first (the service holds them too), then the decode.
_CHILD = """
import json, resource, sys
from service import imaging
data = open(sys.argv[1], "rb").read()
spec = imaging.InputSpec(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
imaging.picture_and_input(data, spec, max_pixels=1 << 40, jpeg_reduce=False)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"before_kib": before, "peak_kib": after}))
"""


def png_of_zeros(width: int, height: int, *, color: bool = False) -> bytes:
    """A valid 8-bit PNG (grayscale or RGB) of zeros, compressed a block of rows at a time, so
    that even 1 x 40,000,000 is made in seconds and kilobytes."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    channels = 3 if color else 1
    row = bytes(width * channels + 1)  # filter byte + samples
    rows_per_block = max(1, (1 << 22) // len(row))
    compressor = zlib.compressobj(9)
    parts = []
    for start in range(0, height, rows_per_block):
        parts.append(compressor.compress(row * min(rows_per_block, height - start)))
    parts.append(compressor.flush())
    header = struct.pack(">IIBBBBB", width, height, 8, 2 if color else 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b"")


def peak_mib(path: Path, input_size: tuple[int, int, int], memory_limit_mib: int | None = None) -> float:
    """MiB the decoding of `path` for a model input (height, width, channels) added to a fresh
    process's peak resident set. With `memory_limit_mib`, the child's address space is limited
    too (RLIMIT_AS above what it had before decoding), so that a regression fails fast instead of
    exhausting the machine."""
    limit = ""
    if memory_limit_mib is not None:
        limit = ("import resource\n"
                 "_now = int(open('/proc/self/statm').read().split()[0]) * resource.getpagesize()\n"
                 f"resource.setrlimit(resource.RLIMIT_AS, (_now + {memory_limit_mib << 20}, resource.RLIM_INFINITY))\n")
    code = _CHILD.replace("before = ", limit + "before = ", 1)
    result = subprocess.run([sys.executable, "-c", code, str(path), *map(str, input_size)], cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        raise RuntimeError(f"decoding {path.name} failed: {(result.stderr.strip().splitlines() or ['?'])[-1]}")
    measured = json.loads(result.stdout)
    return (measured["peak_kib"] - measured["before_kib"]) / 1024


SHAPES = {  # name: (width, height) of 40 megapixels, the default SERVICE_MAX_IMAGE_PIXELS
    "40,000,000 x 1": (40_000_000, 1),
    "1 x 40,000,000": (1, 40_000_000),
    "6,325 x 6,325": (6325, 6325),
}
INPUTS = {"224x224 RGB": (224, 224, 3), "28x28 grayscale": (28, 28, 1)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for shape, (width, height) in SHAPES.items():
            for color in (False, True):
                path = Path(folder, "picture.png")
                path.write_bytes(png_of_zeros(width, height, color=color))
                megapixels = width * height / 1e6
                for model, size in INPUTS.items():
                    peak = peak_mib(path, size)
                    rows.append({"picture": shape, "png": "RGB" if color else "grayscale", "input": model,
                                 "file_kib": round(path.stat().st_size / 1024, 1), "peak_mib": round(peak, 1),
                                 "mib_per_megapixel": round(peak / megapixels, 2)})
                    print(f"{shape:16s} {rows[-1]['png']:9s} PNG ({rows[-1]['file_kib']:7.1f} KiB) -> {model:15s} "
                          f"peak +{peak:7.1f} MiB = {rows[-1]['mib_per_megapixel']:5.2f} MiB per megapixel", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
