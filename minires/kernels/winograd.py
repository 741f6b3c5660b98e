"""3x3 stride-1 convolution by Winograd's minimal filtering F(m x m, 3x3),
m = 2 or 4: (m + 2)^2 multiplications per m x m output tile instead of 9 m^2,
2.25x fewer for F(2x2, 3x3) and 4x fewer for F(4x4, 3x3). Used by the
fast ops the planner chooses for inference and for training
(minires/fast_ops.py), which pick m per layer (winograd_tile_size).

One dimension first. Two outputs of a 3-tap filter g over 4 inputs d,
    y0 = d0 g0 + d1 g1 + d2 g2,    y1 = d1 g0 + d2 g1 + d3 g2,
take 6 multiplications directly but only 4 as
    m1 = (d0 - d2) g0                 m2 = (d1 + d2) (g0 + g1 + g2) / 2
    m4 = (d1 - d3) g2                 m3 = (d2 - d1) (g0 - g1 + g2) / 2
    y0 = m1 + m2 + m3,                y1 = m2 - m3 - m4.
In matrices: y = A^T [(G g) * (B^T d)] with the B_T[2], G[2], A_T[2] below.

Where such matrices come from (Toom-Cook; Lavin & Gray 2015, "Fast Algorithms
for Convolutional Neural Networks"). The LINEAR convolution s = g * u of the
3 taps g with m values u is the product of polynomials s(x) = g(x) u(x), of
degree m + 1, so its values at m + 2 points p_k fix it: evaluate g and u
there, multiply (m + 2 products), interpolate. Point "infinity" stands for
the leading coefficient (s's top one is g2 times u's last). In matrices,
s = C [(G g) * (E u)] with
    E[k, i] = p_k^i                  u evaluated at p_k (infinity: u's last entry)
    G[k]    = (1, p_k, p_k^2) / N_k  g evaluated at p_k, N_k = prod_{q != p_k} (p_k - q)
                                     (infinity: (0, 0, 1), and N = 1)
    C[:, k] = the coefficients of prod_{q != p_k} (x - q), Lagrange's numerator for
              p_k (its 1 / N_k is in G); infinity: of prod_q (x - q), the finite q.
A network's "convolution" is a correlation, y_i = sum_j d_{i+j} g_j: the
TRANSPOSE of u -> g * u (d has m + 2 values, y has m). Transposing the
algorithm gives y = E^T [(G g) * (C^T d)], so A^T = E^T and B^T = C^T.
F(4, 3) takes the points 0, 1, -1, 2, -2, infinity (small points keep the
numbers small: the largest is 2^3 = 8), and the recipe gives exactly
B_T[4], G[4], A_T[4] below; e.g. B^T's row for p = 0 is the coefficients of
(x - 1)(x + 1)(x - 2)(x + 2) = 4 - 5x^2 + x^4, and G's is (1, 0, 0) / 4.
F(2, 3) takes 0, 1, -1, infinity; Lavin's matrices, kept here, flip the sign
of the point-0 rows of B^T and G and of the infinity row of B^T and column
of A^T, which leaves every product, and y, unchanged.

In 2-D the same trick runs along rows and columns: an (m+2)x(m+2) input
tile d and the 3x3 kernel give an m x m output tile
    Y = A^T [ (G g G^T) * (B^T d B) ] A          (* elementwise, (m+2)^2 products).
Summed over input channels, the (m+2)^2 elementwise products become as many
matrix products: with V[k] (tiles, C) the transformed tiles and U[k] (C, F)
the transformed kernel, M[k] = V[k] @ U[k], and each output tile is A^T M A.
Tiles overlap by 2 (stride m), so a tile is exactly im2col's (m+2)x(m+2)
window at stride m: the NumPy code below builds them that way. An output
size that is not a multiple of m takes one spare row and column of tiles,
computed on zeros and cropped. The kernel transform U is done once per
fold in inference (at every step in training); the input and output
transforms are cheap passes (compiled by Numba when it is installed).

Gradients. Each step is linear, so its gradient is its transpose (adjoint):
    Y = A^T M A       ->  dM = A dY A^T            (gradient_tiles)
    M[k] = V[k] U[k]  ->  dU[k] = V[k]^T dM[k]
    U = (G (x) G) g   ->  dg = (G (x) G)^T dU       (kernel_gradient)
so a training step's kernel gradient takes (m+2)^2 products over the tiles
instead of one over every im2col window. (The input gradient needs none of
this: it is a 3x3 correlation itself, see minires/fast_ops.py.)

Rounding: F(4x4)'s larger entries (5 in B^T, 8 in A^T) make the transformed
tiles larger than the outputs they add up to, so the float32 rounding of the
matrix products, relative to those terms, comes back amplified (in float64
products F(4x4) would round 6x less). Against float64, on a 14x14 stage with
256 channels in and out, ReLU'd inputs and He-scaled weights, the largest
error relative to the largest output is 4e-7 by im2col, 6e-7 by F(2x2) and
1.3e-5 by F(4x4) (root mean square: 2.6e-7, 4.4e-7, 2.5e-6). On ResNet-50's
logits (224x224, random weights) the fast path is 5.3e-7 from float64, with
or without F(4x4), as the float32 layers are (5.7e-7): inside its 1e-5.
"""
import math

from ..backend import get_array_module
from ..padding import pad_2d
from .channelwise import add_relu_
from .slicing import im2col

# The transforms of F(m x m, 3x3), by output tile size m.
B_T = {2: ((1, 0, -1, 0), (0, 1, 1, 0), (0, -1, 1, 0), (0, 1, 0, -1)),
       4: ((4, 0, -5, 0, 1, 0),
           (0, -4, -4, 1, 1, 0),
           (0, 4, -4, -1, 1, 0),
           (0, -2, -1, 2, 1, 0),
           (0, 2, -1, -2, 1, 0),
           (0, 4, 0, -5, 0, 1))}
G = {2: ((1, 0, 0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0, 0, 1)),
     4: ((1 / 4, 0, 0),
         (-1 / 6, -1 / 6, -1 / 6),
         (-1 / 6, 1 / 6, -1 / 6),
         (1 / 24, 1 / 12, 1 / 6),
         (1 / 24, -1 / 12, 1 / 6),
         (0, 0, 1))}
A_T = {2: ((1, 1, 1, 0), (0, 1, -1, -1)),
       4: ((1, 1, 1, 1, 1, 0),
           (0, 1, -1, 2, -2, 0),
           (0, 1, 1, 4, 4, 0),
           (0, 1, -1, 8, -8, 1))}
TILE_SIZES = tuple(A_T)


def checked_tile_size(m):
    """``m``, if F(m x m, 3x3) is one of TILE_SIZES (the compiled transforms
    would read and write past their tiles otherwise)."""
    if m not in TILE_SIZES:
        raise ValueError(f"Winograd output tile size m must be one of {TILE_SIZES}, got {m!r}")
    return m


def transform_kernel(kernel, m):
    """(3, 3, C, F) kernel -> U ((m+2)^2, C, F) = G g G^T for every (c, f)."""
    checked_tile_size(m)
    if kernel.ndim != 4 or kernel.shape[:2] != (3, 3):
        raise ValueError(f"Winograd F({m}x{m}, 3x3) needs a (3, 3, C, F) kernel, got shape {kernel.shape}")
    xp = get_array_module(kernel)
    g = xp.asarray(G[m], dtype=kernel.dtype)
    # U[a, b] = sum_ij G[a, i] g[i, j] G[b, j]: with (a, b) and (i, j) flattened, the
    # Kronecker product G (x) G times the 9 taps, one matrix product (training
    # transforms at every step: 1.8 ms for a 512x512 F(2x2) kernel, 55 by einsum)
    taps = kernel.reshape(9, -1)
    return (xp.kron(g, g) @ taps).reshape(-1, *kernel.shape[2:])


def output_tile_size(u):
    """m of a transformed kernel U ((m+2)^2, C, F)."""
    return checked_tile_size(math.isqrt(u.shape[0]) - 2)


def tile_counts(out_h, out_w, m):
    """m x m output tiles covering an (out_h, out_w) output (spare ones past a multiple of m)."""
    return -(-out_h // m), -(-out_w // m)


def input_tiles(x, pads, out_size, m):
    """x (N, H, W, C) unpadded, pads ((top, bottom), (left, right)) ->
    V ((m+2)^2, N*TH*TW, C) = B^T d B of every (m+2)x(m+2) tile d of the padded input."""
    xp = get_array_module(x)
    tiles_h, tiles_w = tile_counts(*out_size, m)
    (top, _), (left, _) = pads
    # zeros after the padding for the spare tiles past a multiple of m
    bottom = m * tiles_h + 2 - x.shape[1] - top
    right = m * tiles_w + 2 - x.shape[2] - left
    d = im2col(pad_2d(x, ((top, bottom), (left, right))), m + 2, m + 2, m, m)   # (N, TH, TW, m+2, m+2, C)
    b_t = xp.asarray(B_T[m], dtype=x.dtype)
    v = xp.einsum("ai,ntsijc,bj->abntsc", b_t, d, b_t)
    return xp.ascontiguousarray(v).reshape((m + 2) ** 2, -1, x.shape[3])


def output_tiles(products, bias, residual, relu, z, m):
    """M ((m+2)^2, N*TH*TW, F) -> z (N, OH, OW, F), written in place: A^T M A per
    tile, + bias [+ residual], then ReLU if ``relu`` (as channelwise.add_relu_)."""
    xp = get_array_module(products)
    batch, out_h, out_w, filters = z.shape
    tiles_h, tiles_w = tile_counts(out_h, out_w, m)
    a_t = xp.asarray(A_T[m], dtype=products.dtype)
    products = products.reshape(m + 2, m + 2, batch, tiles_h, tiles_w, filters)
    y = xp.einsum("ia,abntsf,jb->ntisjf", a_t, products, a_t)   # (N, TH, m, TW, m, F)
    z[...] = y.reshape(batch, m * tiles_h, m * tiles_w, filters)[:, :out_h, :out_w]
    add_relu_(z, bias, residual, relu)


def gradient_tiles(dz, m):
    """dz (N, OH, OW, F), the gradient of output_tiles' z -> dM ((m+2)^2, N*TH*TW, F),
    that of the products M: the adjoint of the output transform, A dY A^T per
    m x m tile dY (the spare tiles' part of z was cropped away: zeros there)."""
    xp = get_array_module(dz)
    batch, out_h, out_w, filters = dz.shape
    tiles_h, tiles_w = tile_counts(out_h, out_w, m)
    padded = pad_2d(dz, ((0, m * tiles_h - out_h), (0, m * tiles_w - out_w)))
    tiles = padded.reshape(batch, tiles_h, m, tiles_w, m, filters)
    a = xp.asarray(A_T[m], dtype=dz.dtype).T
    grads = xp.einsum("ai,ntisjf,bj->abntsf", a, tiles, a, optimize=True)
    return xp.ascontiguousarray(grads).reshape((m + 2) ** 2, -1, filters)


def kernel_gradient(grads_u, m):
    """dL/dU ((m+2)^2, C, F) -> dL/dW (3, 3, C, F): transform_kernel's adjoint,
    U = (G (x) G) W flattened, so dW = (G (x) G)^T dU."""
    xp = get_array_module(grads_u)
    g = xp.asarray(G[m], dtype=grads_u.dtype)
    return (xp.kron(g, g).T @ grads_u.reshape((m + 2) ** 2, -1)).reshape(3, 3, *grads_u.shape[1:])


# --- where Winograd pays, and which m (the inference and training fast paths) ---
# F(4x4)'s transformed kernel, 36 C F numbers, is read once per call: up to
# this size it stays in cache (measured on a 2-core x86-64, see winograd_tile_size).
WINOGRAD_CACHED_KERNEL_BYTES = 4 << 20


def winograd_tile_size(out_size, channels, filters, itemsize):
    """How a 3x3 stride-1 conv with output (OH, OW) runs: m for Winograd
    F(m x m, 3x3), or None for im2col.

    F(m x m) does (m+2)^2 matrix products, each with one row per m x m tile
    of each image, against a transformed kernel (m+2)^2 / 9 times the
    kernel's size; its input and output transforms cost about C + F per
    tile entry where the products cost C F. Hence, as measured on
    ResNet-50's shapes at batch 1 and 4 (one thread's CPU time, on a shared
    2-core x86-64):
      - im2col with under 16 input channels (the transforms outweigh the
        saved products: 1.6-2.7x slower for an RGB image) or an output under
        4x4 (mostly spare tiles: 3x3 and 2x2 outputs 15-50% slower);
      - F(4x4) when an image has at least 32 of its tiles (outputs from
        21x21 up) or its transformed kernel fits in the cache: then the
        kernel's reads cost less than the 44% of F(2x2)'s products saved
        (56x56x64 at batch 1: 1.0 ms against 2.2 ms, at batch 4 7.9 and 9.1);
      - else F(2x2): ResNet-50's 14x14x256 convs take 1.4 ms by F(2x2) and
        1.9 ms by F(4x4) at batch 1 (16 rows per product, a 9 MB kernel;
        at batch 4 F(4x4) is 10% ahead, 4.9 against 5.5 ms), and 7x7x512
        3.2 and 4.9 ms (7.4 and 7.2 at batch 4).
    An unknown size (a model for any image size) gets F(2x2), which was never
    slower than im2col from 4x4 up with 16 channels or more.
    """
    if channels < 16 or (None not in out_size and min(out_size) < 4):
        return None
    if None in out_size:
        return 2
    tiles_h, tiles_w = tile_counts(*out_size, 4)
    kernel_bytes = 36 * channels * filters * itemsize
    return 4 if tiles_h * tiles_w >= 32 or kernel_bytes <= WINOGRAD_CACHED_KERNEL_BYTES else 2


# Fewer tiles than this in a batch: im2col instead (see winograd_pays_at).
WINOGRAD_LEAST_TILES = 32


def winograd_pays_at(batch, out_size, m):
    """Whether F(m x m, 3x3) beats im2col for this batch: its (m+2)^2 products
    have one row per tile of the batch, each reading a slice of a kernel
    (m+2)^2 / 9 times im2col's, so with few rows the kernel's reads decide.
    ResNet-50's 7x7x512 convs at batch 1 (16 tiles by F(2x2)) run 2 ms
    faster, of a 54 ms forward, by im2col (one 49-row product, 9.4 MB of
    kernel against 16.8 MB); at batch 4 (64 tiles) F(2x2) is faster."""
    tiles_h, tiles_w = tile_counts(*out_size, m)
    return batch * tiles_h * tiles_w >= WINOGRAD_LEAST_TILES
