//! Training attention as flash attention's three kernels, with a decoder's mask computed from
//! per-token codes instead of read from an [s, t] buffer:
//!
//! - [`forward`]: O and each row's softmax statistics (its largest score m and Σ exp(score − m));
//! - [`query_gradients`]: dq, each query row sweeping the keys it reads;
//! - [`key_gradients`]: dk and dv, each key row sweeping the queries that read it, over every
//!   query head of its group (grouped-query attention is read in place, never repeated).
//!
//! One unit owns one row and keeps it in registers; a cube of [`ROWS`] units shares each tile of
//! the other side (keys, or queries and their gradients) in shared memory, loaded once for all of
//! them. Backward recomputes P = exp(q·kᵀ − m) / Σ from the statistics. Nothing of size s × t
//! exists, so a layer's attention memory is linear in the sequence. Every sum is in f32, whatever
//! the tensors' own float type.
//!
//! The mask: query i (at position `start + i`) may read key j when
//! - its code is < 0 (a padding query with no real key in reach): j is i itself;
//! - its code is 0 (padding): j is in reach and a real token (code ≠ 0);
//! - else: j is in reach and has the same code (the same packed example);
//!
//! where "in reach" is j ≤ i < j + window. It is `MaskSource`'s rule, which the generic path
//! (the oracle) draws as a boolean mask.

use burn::backend::cubecl::dtype_to_storage_type;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, backend_extension};
use burn::tensor::{DType, Shape};
use burn_cubecl::CubeBackend;
use burn_cubecl::cubecl::{CubeCount, CubeDim};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_dtype;
use burn_cubecl::tensor::CubeTensor;

/// Rows (units) per cube.
pub const ROWS: usize = 64;
/// Elements of the other side's tile: TILE / d rows of d, f32, so two tiles fill 16 KiB of shared
/// memory (every GPU and llvmpipe give at least 32 KiB).
const TILE: usize = 2048;

/// Rows of the other side per shared tile, for head dimension `d` (≤ [`TILE`]).
fn tile_rows(d: usize) -> usize {
    (TILE / d).max(1)
}

/// Whether the kernels take heads of dimension `d`.
pub fn supports(d: usize) -> bool {
    (1..=TILE).contains(&d)
}

#[backend_extension(Cube, Fusion)]
pub trait AttentionOps: Backend {
    /// q [b, h, s, d] (scaled), k, v [b, kv, t, d], query_codes [b, s], key_codes [b, t] (f32)
    /// → (O [b, h, s, d], statistics [b, h, s, 2] f32: each row's m and Σ exp(score − m)).
    #[fusion(meta = |q, _k, _v, _qc, _kc, _start, _window| {
        let mut stats = q.shape.clone();
        stats[3] = 2;
        (q.clone(), burn::backend::fusion::custom::TensorSpec::new(stats, DType::F32))
    })]
    fn attention_forward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        query_codes: FloatTensor<Self>,
        key_codes: FloatTensor<Self>,
        start: u32,
        window: u32,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);

    /// dq [b, h, s, d] for the scaled q, given dO [b, h, s, d], the statistics and
    /// D = Σ_d dO⊙O [b, h, s, 1] (f32).
    #[fusion(dtype = q, shape = q)]
    #[allow(clippy::too_many_arguments)]
    fn attention_query_gradients(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        dout: FloatTensor<Self>,
        stats: FloatTensor<Self>,
        rows: FloatTensor<Self>,
        query_codes: FloatTensor<Self>,
        key_codes: FloatTensor<Self>,
        start: u32,
        window: u32,
    ) -> FloatTensor<Self>;

    /// (dk, dv), each [b, kv, t, d]: the sums over the query heads of each key/value head.
    #[fusion(meta = |_q, k, v, _dout, _stats, _rows, _qc, _kc, _start, _window| (k.clone(), v.clone()))]
    #[allow(clippy::too_many_arguments)]
    fn attention_key_gradients(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        dout: FloatTensor<Self>,
        stats: FloatTensor<Self>,
        rows: FloatTensor<Self>,
        query_codes: FloatTensor<Self>,
        key_codes: FloatTensor<Self>,
        start: u32,
        window: u32,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);
}

/// An empty contiguous tensor on `like`'s device.
fn empty(like: &CubeTensor, shape: Vec<usize>, dtype: DType) -> CubeTensor {
    empty_device_dtype(
        like.client.clone(),
        like.device.clone(),
        Shape::from(shape),
        dtype,
    )
}

/// One cube per `ROWS` rows (x) of each head (y) of each example (z).
fn cubes(rows: usize, heads: usize, batch: usize) -> CubeCount {
    CubeCount::Static(rows.div_ceil(ROWS) as u32, heads as u32, batch as u32)
}

impl AttentionOps for CubeBackend {
    fn attention_forward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        query_codes: FloatTensor<Self>,
        key_codes: FloatTensor<Self>,
        start: u32,
        window: u32,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let [q, k, v, qc, kc] = [q, k, v, query_codes, key_codes].map(into_contiguous);
        let [b, h, s, d] = dims(&q);
        let out = empty(&q, vec![b, h, s, d], q.dtype);
        let stats = empty(&q, vec![b, h, s, 2], DType::F32);
        let dtype = q.dtype;
        kernels::forward::launch(
            &q.client,
            cubes(s, h, b),
            CubeDim::new_1d(ROWS as u32),
            q.clone().into_tensor_arg(),
            k.into_tensor_arg(),
            v.into_tensor_arg(),
            qc.into_tensor_arg(),
            kc.into_tensor_arg(),
            out.clone().into_tensor_arg(),
            stats.clone().into_tensor_arg(),
            start,
            window,
            d,
            tile_rows(d),
            dtype_to_storage_type(dtype),
        );
        (out, stats)
    }

    fn attention_query_gradients(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        dout: FloatTensor<Self>,
        stats: FloatTensor<Self>,
        rows: FloatTensor<Self>,
        query_codes: FloatTensor<Self>,
        key_codes: FloatTensor<Self>,
        start: u32,
        window: u32,
    ) -> FloatTensor<Self> {
        let [q, k, v, dout, stats, rows, qc, kc] =
            [q, k, v, dout, stats, rows, query_codes, key_codes].map(into_contiguous);
        let [b, h, s, d] = dims(&q);
        let dq = empty(&q, vec![b, h, s, d], q.dtype);
        let dtype = q.dtype;
        kernels::query_gradients::launch(
            &q.client,
            cubes(s, h, b),
            CubeDim::new_1d(ROWS as u32),
            q.clone().into_tensor_arg(),
            k.into_tensor_arg(),
            v.into_tensor_arg(),
            dout.into_tensor_arg(),
            stats.into_tensor_arg(),
            rows.into_tensor_arg(),
            qc.into_tensor_arg(),
            kc.into_tensor_arg(),
            dq.clone().into_tensor_arg(),
            start,
            window,
            d,
            tile_rows(d),
            dtype_to_storage_type(dtype),
        );
        dq
    }

    fn attention_key_gradients(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        dout: FloatTensor<Self>,
        stats: FloatTensor<Self>,
        rows: FloatTensor<Self>,
        query_codes: FloatTensor<Self>,
        key_codes: FloatTensor<Self>,
        start: u32,
        window: u32,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let [q, k, v, dout, stats, rows, qc, kc] =
            [q, k, v, dout, stats, rows, query_codes, key_codes].map(into_contiguous);
        let [b, kv, t, d] = dims(&k);
        let dk = empty(&k, vec![b, kv, t, d], k.dtype);
        let dv = empty(&k, vec![b, kv, t, d], k.dtype);
        let dtype = q.dtype;
        kernels::key_gradients::launch(
            &q.client,
            cubes(t, kv, b),
            CubeDim::new_1d(ROWS as u32),
            q.clone().into_tensor_arg(),
            k.clone().into_tensor_arg(),
            v.into_tensor_arg(),
            dout.into_tensor_arg(),
            stats.into_tensor_arg(),
            rows.into_tensor_arg(),
            qc.into_tensor_arg(),
            kc.into_tensor_arg(),
            dk.clone().into_tensor_arg(),
            dv.clone().into_tensor_arg(),
            start,
            window,
            d,
            tile_rows(d),
            dtype_to_storage_type(dtype),
        );
        (dk, dv)
    }
}

fn dims(t: &CubeTensor) -> [usize; 4] {
    let shape = t.meta.shape();
    [shape[0], shape[1], shape[2], shape[3]]
}

/// The kernels, in cubecl's vocabulary (its `Tensor` is a kernel argument, not burn's). All
/// tensors are contiguous; `window` is at most t (no window: t).
// cubecl's kernel language has no `div_ceil`.
#[allow(clippy::manual_div_ceil)]
mod kernels {
    use burn_cubecl::cubecl;
    use burn_cubecl::cubecl::prelude::*;

    use super::ROWS;

    /// Whether the query at position `i` with code `own` may read key `j` with code `key`.
    #[cube]
    fn reads(i: usize, j: usize, own: f32, key: f32, window: usize) -> bool {
        let reach = j <= i && i < j + window;
        let real = reach && key != 0.0;
        let same = reach && key == own;
        let general = select(own == 0.0, real, same);
        select(own < 0.0, j == i, general)
    }

    /// Copies rows `first..first + n` (clamped to `len`) of the [len, d] matrix at `base` into
    /// `tile` ([n, d], f32), the cube's units sharing the work; rows past `len` read as 0.
    #[cube]
    fn load_tile<F: Float>(
        source: &Tensor<F>,
        base: usize,
        first: usize,
        len: usize,
        tile: &mut Shared<[f32]>,
        #[comptime] n: usize,
        #[comptime] d: usize,
    ) {
        let per_unit = comptime!((n * d).div_ceil(ROWS));
        for step in 0..per_unit {
            let at = step * ROWS + UNIT_POS_X as usize;
            if at < n * d {
                let row = first + at / d;
                let value = if row < len {
                    f32::cast_from(source[base + first * d + at])
                } else {
                    0.0f32
                };
                tile[at] = value;
            }
        }
    }

    /// Copies entries `first..first + n` (clamped to `len`) of the vector at `base` with stride
    /// `stride` (and offset `offset`) into `tile`.
    #[cube]
    fn load_entries(
        source: &Tensor<f32>,
        base: usize,
        first: usize,
        len: usize,
        stride: usize,
        offset: usize,
        tile: &mut Shared<[f32]>,
        #[comptime] n: usize,
    ) {
        let per_unit = comptime!(n.div_ceil(ROWS));
        for step in 0..per_unit {
            let at = step * ROWS + UNIT_POS_X as usize;
            if at < n {
                let row = first + at;
                let value = if row < len {
                    source[base + row * stride + offset]
                } else {
                    0.0f32
                };
                tile[at] = value;
            }
        }
    }

    /// Σ_c a[c]·tile[row·d + c].
    #[cube]
    fn dot(a: &Array<f32>, tile: &Shared<[f32]>, row: usize, #[comptime] d: usize) -> f32 {
        let mut sum = f32::new(0.0);
        for c in 0..d {
            sum += a[c] * tile[row * d + c];
        }
        sum
    }

    /// a[c] += w·tile[row·d + c].
    #[cube]
    fn add_scaled(
        a: &mut Array<f32>,
        w: f32,
        tile: &Shared<[f32]>,
        row: usize,
        #[comptime] d: usize,
    ) {
        for c in 0..d {
            a[c] += w * tile[row * d + c];
        }
    }

    /// The row at `base` as f32 registers.
    #[cube]
    fn load_row<F: Float>(source: &Tensor<F>, base: usize, #[comptime] d: usize) -> Array<f32> {
        let mut row = Array::<f32>::new(d);
        for c in 0..d {
            row[c] = f32::cast_from(source[base + c]);
        }
        row
    }

    #[cube]
    fn zeros(#[comptime] d: usize) -> Array<f32> {
        let mut row = Array::<f32>::new(d);
        for c in 0..d {
            row[c] = 0.0f32;
        }
        row
    }

    /// The first key any query of rows `first..last` (positions, inclusive) reads.
    #[cube]
    fn first_key(first: usize, window: usize) -> usize {
        select(first + 1 > window, first + 1 - window, 0usize)
    }

    /// This unit's query row (the last one where the cube runs past s) and whether it is real.
    #[cube]
    fn query_row(s: usize) -> (usize, bool) {
        let row = CUBE_POS_X as usize * ROWS + UNIT_POS_X as usize;
        (select(row < s, row, s - 1), row < s)
    }

    /// The keys this cube's queries read: (the first, one past the last, tiles of `keys`).
    #[cube]
    fn key_range(
        s: usize,
        start: usize,
        window: usize,
        #[comptime] keys: usize,
    ) -> (usize, usize, usize) {
        let first = CUBE_POS_X as usize * ROWS;
        let last = start + select(first + ROWS < s, first + ROWS, s);
        let begin = first_key(start + first, window);
        (begin, last, (last - begin + keys - 1) / keys)
    }

    /// Keys `from..from + n` (up to `last`) of one key/value head into the shared tiles: their
    /// k and v rows and their codes; then the cube waits for all of them.
    #[cube]
    #[allow(clippy::too_many_arguments)]
    fn load_keys<F: Float>(
        k: &Tensor<F>,
        v: &Tensor<F>,
        key_codes: &Tensor<f32>,
        kv_base: usize,
        codes_base: usize,
        from: usize,
        last: usize,
        k_tile: &mut Shared<[f32]>,
        v_tile: &mut Shared<[f32]>,
        codes: &mut Shared<[f32]>,
        #[comptime] n: usize,
        #[comptime] d: usize,
    ) {
        load_tile(k, kv_base, from, last, k_tile, n, d);
        load_tile(v, kv_base, from, last, v_tile, n, d);
        load_entries(key_codes, codes_base, from, last, 1, 0, codes, n);
        sync_cube();
    }

    #[cube(launch)]
    #[allow(clippy::too_many_arguments)]
    pub fn forward<F: Float>(
        q: &Tensor<F>,
        k: &Tensor<F>,
        v: &Tensor<F>,
        query_codes: &Tensor<f32>,
        key_codes: &Tensor<f32>,
        out: &mut Tensor<F>,
        stats: &mut Tensor<f32>,
        start: u32,
        window: u32,
        #[comptime] d: usize,
        #[comptime] keys: usize,
        #[define(F)] _dtype: ElemType,
    ) {
        let (h, s) = (q.shape(1), q.shape(2));
        let (kv, t) = (k.shape(1), k.shape(2));
        let (head, batch) = (CUBE_POS_Y as usize, CUBE_POS_Z as usize);
        let (start, window) = (start as usize, window as usize);
        let (row, live) = query_row(s);
        let i = start + row;
        let own = query_codes[batch * s + row];
        let qrow = (batch * h + head) * s + row;
        let query = load_row(q, qrow * d, d);
        let mut acc = zeros(d);
        let mut m = f32::new(-3.0e38);
        let mut l = f32::new(0.0);

        let kv_base = (batch * kv + head / (h / kv)) * t * d;
        let (begin, last, tiles) = key_range(s, start, window, keys);
        let mut k_tile = Shared::<[f32]>::new_slice(comptime!(keys * d));
        let mut v_tile = Shared::<[f32]>::new_slice(comptime!(keys * d));
        let mut codes = Shared::<[f32]>::new_slice(keys);
        for tile in 0..tiles {
            let from = begin + tile * keys;
            let (kt, vt, ct) = (&mut k_tile, &mut v_tile, &mut codes);
            load_keys(
                k,
                v,
                key_codes,
                kv_base,
                batch * t,
                from,
                last,
                kt,
                vt,
                ct,
                keys,
                d,
            );
            if live {
                for r in 0..keys {
                    let j = from + r;
                    if j < last && reads(i, j, own, codes[r], window) {
                        let score = dot(&query, &k_tile, r, d);
                        if score > m {
                            let shrink = f32::exp(m - score);
                            for c in 0..d {
                                acc[c] *= shrink;
                            }
                            l *= shrink;
                            m = score;
                        }
                        let p = f32::exp(score - m);
                        l += p;
                        add_scaled(&mut acc, p, &v_tile, r, d);
                    }
                }
            }
            sync_cube();
        }
        if live {
            for c in 0..d {
                out[qrow * d + c] = F::cast_from(acc[c] / l);
            }
            stats[qrow * 2] = m;
            stats[qrow * 2 + 1] = l;
        }
    }

    #[cube(launch)]
    #[allow(clippy::too_many_arguments)]
    pub fn query_gradients<F: Float>(
        q: &Tensor<F>,
        k: &Tensor<F>,
        v: &Tensor<F>,
        dout: &Tensor<F>,
        stats: &Tensor<f32>,
        rows: &Tensor<f32>,
        query_codes: &Tensor<f32>,
        key_codes: &Tensor<f32>,
        dq: &mut Tensor<F>,
        start: u32,
        window: u32,
        #[comptime] d: usize,
        #[comptime] keys: usize,
        #[define(F)] _dtype: ElemType,
    ) {
        let (h, s) = (q.shape(1), q.shape(2));
        let (kv, t) = (k.shape(1), k.shape(2));
        let (head, batch) = (CUBE_POS_Y as usize, CUBE_POS_Z as usize);
        let (start, window) = (start as usize, window as usize);
        let (row, live) = query_row(s);
        let i = start + row;
        let own = query_codes[batch * s + row];
        let qrow = (batch * h + head) * s + row;
        let query = load_row(q, qrow * d, d);
        let grad = load_row(dout, qrow * d, d);
        let (m, l, big_d) = (stats[qrow * 2], stats[qrow * 2 + 1], rows[qrow]);
        let mut acc = zeros(d);

        let kv_base = (batch * kv + head / (h / kv)) * t * d;
        let (begin, last, tiles) = key_range(s, start, window, keys);
        let mut k_tile = Shared::<[f32]>::new_slice(comptime!(keys * d));
        let mut v_tile = Shared::<[f32]>::new_slice(comptime!(keys * d));
        let mut codes = Shared::<[f32]>::new_slice(keys);
        for tile in 0..tiles {
            let from = begin + tile * keys;
            let (kt, vt, ct) = (&mut k_tile, &mut v_tile, &mut codes);
            load_keys(
                k,
                v,
                key_codes,
                kv_base,
                batch * t,
                from,
                last,
                kt,
                vt,
                ct,
                keys,
                d,
            );
            if live {
                for r in 0..keys {
                    let j = from + r;
                    if j < last && reads(i, j, own, codes[r], window) {
                        let p = f32::exp(dot(&query, &k_tile, r, d) - m) / l;
                        let ds = p * (dot(&grad, &v_tile, r, d) - big_d);
                        add_scaled(&mut acc, ds, &k_tile, r, d);
                    }
                }
            }
            sync_cube();
        }
        if live {
            for c in 0..d {
                dq[qrow * d + c] = F::cast_from(acc[c]);
            }
        }
    }

    #[cube(launch)]
    #[allow(clippy::too_many_arguments)]
    pub fn key_gradients<F: Float>(
        q: &Tensor<F>,
        k: &Tensor<F>,
        v: &Tensor<F>,
        dout: &Tensor<F>,
        stats: &Tensor<f32>,
        rows: &Tensor<f32>,
        query_codes: &Tensor<f32>,
        key_codes: &Tensor<f32>,
        dk: &mut Tensor<F>,
        dv: &mut Tensor<F>,
        start: u32,
        window: u32,
        #[comptime] d: usize,
        #[comptime] queries: usize,
        #[define(F)] _dtype: ElemType,
    ) {
        let (h, s) = (q.shape(1), q.shape(2));
        let (kv, t) = (k.shape(1), k.shape(2));
        let (kv_head, batch) = (CUBE_POS_Y as usize, CUBE_POS_Z as usize);
        let (start, window) = (start as usize, window as usize);
        let first = CUBE_POS_X as usize * ROWS;
        let j = first + UNIT_POS_X as usize;
        let live = j < t;
        let j = select(live, j, t - 1);
        let code = key_codes[batch * t + j];
        let krow = (batch * kv + kv_head) * t + j;
        let key = load_row(k, krow * d, d);
        let value = load_row(v, krow * d, d);
        let mut dk_acc = zeros(d);
        let mut dv_acc = zeros(d);

        // Queries at positions first..last_key + window read these keys: rows from
        // first − start (a query never reads a later key) to last_key + window − start.
        let last_key = select(first + ROWS < t, first + ROWS, t) - 1;
        let row_begin = select(first > start, first - start, 0usize);
        let reach = last_key + window; // one past the last query position reading a key here
        let reach = select(reach > start, reach - start, 0usize);
        let row_end = select(reach < s, reach, s);
        let tiles = select(
            row_end > row_begin,
            (row_end - row_begin + queries - 1) / queries,
            0usize,
        );
        let group = h / kv;
        let mut q_tile = Shared::<[f32]>::new_slice(comptime!(queries * d));
        let mut g_tile = Shared::<[f32]>::new_slice(comptime!(queries * d));
        let mut m_tile = Shared::<[f32]>::new_slice(queries);
        let mut l_tile = Shared::<[f32]>::new_slice(queries);
        let mut d_tile = Shared::<[f32]>::new_slice(queries);
        let mut codes = Shared::<[f32]>::new_slice(queries);
        for member in 0..group {
            let head = kv_head * group + member;
            let q_base = (batch * h + head) * s;
            for tile in 0..tiles {
                let from = row_begin + tile * queries;
                load_tile(q, q_base * d, from, row_end, &mut q_tile, queries, d);
                load_tile(dout, q_base * d, from, row_end, &mut g_tile, queries, d);
                load_entries(stats, q_base * 2, from, row_end, 2, 0, &mut m_tile, queries);
                load_entries(stats, q_base * 2, from, row_end, 2, 1, &mut l_tile, queries);
                load_entries(rows, q_base, from, row_end, 1, 0, &mut d_tile, queries);
                load_entries(
                    query_codes,
                    batch * s,
                    from,
                    row_end,
                    1,
                    0,
                    &mut codes,
                    queries,
                );
                sync_cube();
                if live {
                    for r in 0..queries {
                        let row = from + r;
                        if row < row_end && reads(start + row, j, codes[r], code, window) {
                            let p = f32::exp(dot(&key, &q_tile, r, d) - m_tile[r]) / l_tile[r];
                            add_scaled(&mut dv_acc, p, &g_tile, r, d);
                            let ds = p * (dot(&value, &g_tile, r, d) - d_tile[r]);
                            add_scaled(&mut dk_acc, ds, &q_tile, r, d);
                        }
                    }
                }
                sync_cube();
            }
        }
        if live {
            for c in 0..d {
                dk[krow * d + c] = F::cast_from(dk_acc[c]);
                dv[krow * d + c] = F::cast_from(dv_acc[c]);
            }
        }
    }
}
