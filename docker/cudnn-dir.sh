#!/bin/sh
# Gives engines/cuda's CMake (FQ_CUDNN_DIR: a folder with include/cudnn.h and lib/libcudnn.so.9) a view of a cuDNN
# installed by distribution packages, as in NVIDIA's cudnn images, where the headers sit under /usr/include
# (often /usr/include/<triplet>/cudnn_v9.h behind alternatives links) and the libraries under /usr/lib/<triplet>.
#   docker/cudnn-dir.sh DEST [ROOT]     (ROOT, default /, is where to look; the test passes a fake tree)
# Prints DEST on success; exits 1 when no cuDNN 9 is found.
set -eu
dest=$1
root=${2:-/}
header=$(find "$root/usr/include" "$root/usr/local/cuda/include" -name 'cudnn.h' 2>/dev/null | head -n 1)
[ -n "$header" ] || header=$(find "$root/usr/include" -name 'cudnn_v9.h' 2>/dev/null | head -n 1)
lib=$(find "$root/usr/lib" "$root/usr/local/cuda/lib64" -name 'libcudnn.so.9' 2>/dev/null | head -n 1)
if [ -z "$header" ] || [ -z "$lib" ]; then
  echo "cudnn-dir: no cuDNN 9 under $root (header: ${header:-none}, library: ${lib:-none})" >&2
  exit 1
fi
mkdir -p "$dest/include" "$dest/lib"
# Every cudnn*.h beside the main header (cudnn.h includes its sub-headers by name).
for h in "$(dirname "$header")"/cudnn*.h; do
  name=$(basename "$h" | sed 's/_v9\.h$/.h/')
  ln -sf "$h" "$dest/include/$name"
done
for l in "$(dirname "$lib")"/libcudnn*.so*; do ln -sf "$l" "$dest/lib/$(basename "$l")"; done
echo "$dest"
