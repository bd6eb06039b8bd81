/* twinopt's native CPU kernels: one fused pass over each tensor of a param group.
 *
 * Built on first use by torch_opt/_native/__init__.py (cc -O3 -march=native -ffp-contract=off
 * -fopenmp) and called through ctypes with arrays of data pointers, one call per group.
 * Every kernel reads each operand once and writes each result once, so a step runs at the
 * machine's memory bandwidth. The per-element operations are torch's own, in torch's order
 * (FMA exactly where torch's vectorized CPU kernels fuse: addcmul, add with alpha, lerp), with
 * one difference: the square root here is IEEE's (correctly rounded), while torch's CPU sqrt
 * runs MKL's vsSqrt/vdSqrt where torch is built with MKL, which differs in the last bit for
 * about one float32 entry in five. Calling it block by block made the RMSprop step 1.5x slower
 * (benchmarks/README.md), so a float32 step agrees with torch.optim.RMSprop's to about an ulp,
 * not to the bit; the foreach path (foreach=True) keeps the bitwise agreement. The equation
 * tags are those of torch_opt/rmsprop_ode/kernels.py, torch_opt/amos.py and (MGS's proposal)
 * torch_opt/sampling/__init__.py.
 */
#include <math.h>
#include <stdint.h>

#ifdef _OPENMP
#include <omp.h>
#define PRAGMA(x) _Pragma(#x)
#else
#define PRAGMA(x)
static inline int omp_get_num_threads(void) { return 1; }
static inline int omp_get_thread_num(void) { return 0; }
#endif

/* This thread's share [lo, hi) of n entries: static, in whole 64-byte lines. */
static inline void share(int64_t n, int64_t *lo, int64_t *hi) {
    const int64_t threads = omp_get_num_threads(), id = omp_get_thread_num();
    int64_t chunk = (n + threads - 1) / threads;
    chunk = (chunk + 15) / 16 * 16;
    *lo = id * chunk < n ? id * chunk : n;
    *hi = *lo + chunk < n ? *lo + chunk : n;
}

/* RMSprop-ODE flags (kept in step with torch_opt/_native/__init__.py). */
#define F_MAXIMIZE 1
#define F_WEIGHT_DECAY 2
#define F_CENTERED 4
#define F_BIAS 8
#define F_EPS_IN_SQRT 16
#define F_MOMENTUM 32
#define N_FLAGS 64

/* ``switch (flags) { CASES64(body, args...) }`` calls ``body(F, args...)`` with the flags as a
 * compile-time constant F, so each combination gets its own branch-free, vectorized loop. */
#define CASE(F, FN, ...)                                                                     \
    case F:                                                                                  \
        FN(F, __VA_ARGS__);                                                                  \
        break;
#define CASES4(B, FN, ...)                                                                   \
    CASE(B + 0, FN, __VA_ARGS__) CASE(B + 1, FN, __VA_ARGS__) CASE(B + 2, FN, __VA_ARGS__)   \
    CASE(B + 3, FN, __VA_ARGS__)
#define CASES8(B, FN, ...) CASES4(B, FN, __VA_ARGS__) CASES4(B + 4, FN, __VA_ARGS__)
#define CASES64(FN, ...)                                                                     \
    CASES8(0, FN, __VA_ARGS__) CASES8(8, FN, __VA_ARGS__) CASES8(16, FN, __VA_ARGS__)        \
    CASES8(24, FN, __VA_ARGS__) CASES8(32, FN, __VA_ARGS__) CASES8(40, FN, __VA_ARGS__)      \
    CASES8(48, FN, __VA_ARGS__) CASES8(56, FN, __VA_ARGS__)

/* torch's lerp: weight*(end-start)+start for a small weight, else end-(1-weight)*(end-start). */
#define LERP(T, FMA, start, end, w)                                                          \
    ((w) < (T)0.5 ? FMA((w), (end) - (start), (start))                                       \
                  : FMA((w) - (T)1, (end) - (start), (end)))

/* ------------------------------------------------------------------ element-wise RMSprop-ODE */

#define DEFINE_RMSPROP(T, SUFFIX, SQRT, FMA)                                                  \
    static inline __attribute__((always_inline)) void rmsprop_##SUFFIX##_body(               \
        const int flags, int64_t n_tensors, T **p, T **g, T **nu, T **mu, T **buf,           \
        const int64_t *numel, const double *bias, double alpha_, double lr_, double eps_,    \
        double wd_, double momentum_) {                                                      \
        const T alpha = (T)alpha_, one_minus_alpha = (T)(1.0 - alpha_), eps = (T)eps_;        \
        const T neg_lr = (T)(-lr_), wd = (T)wd_, momentum = (T)momentum_;                     \
        for (int64_t t = 0; t < n_tensors; t++) {                                            \
            T *restrict pt = p[t], *restrict nut = nu[t];                                     \
            const T *restrict gt = g[t];                                                     \
            T *restrict mut = (flags & F_CENTERED) ? mu[t] : 0;                              \
            T *restrict buft = (flags & F_MOMENTUM) ? buf[t] : 0;                            \
            const T c = (flags & F_BIAS) ? (T)bias[t] : (T)1;                                \
            int64_t lo, hi;                                                                  \
            share(numel[t], &lo, &hi);                                                       \
            PRAGMA(omp simd)                                                                 \
            for (int64_t i = lo; i < hi; i++) {                                              \
                T gi = gt[i];                                                                \
                if (flags & F_MAXIMIZE) gi = -gi;                    /* (M) */               \
                if (flags & F_WEIGHT_DECAY) gi = FMA(wd, pt[i], gi); /* (W) */               \
                T s = nut[i] * alpha;                                                        \
                s = FMA(one_minus_alpha * gi, gi, s); /* (1): torch's addcmul */             \
                nut[i] = s;                                                                  \
                T m = 0;                                                                     \
                if (flags & F_CENTERED) {                                                    \
                    m = LERP(T, FMA, mut[i], gi, one_minus_alpha); /* (2) */                 \
                    mut[i] = m;                                                              \
                }                                                                            \
                T v = s;                                                                     \
                if (flags & F_BIAS) {                                                        \
                    v = s / c; /* (3) */                                                     \
                    m = m / c;                                                               \
                }                                                                            \
                if (flags & F_CENTERED) v = FMA((T)(-1) * m, m, v); /* (4) */                \
                const T d = (flags & F_EPS_IN_SQRT) ? SQRT(v + eps) : SQRT(v) + eps; /* (5) */ \
                if (flags & F_MOMENTUM) {                                                    \
                    T b = buft[i] * momentum;                                                \
                    b = b + (T)1 * gi / d; /* (6) */                                         \
                    buft[i] = b;                                                             \
                    pt[i] = FMA(neg_lr, b, pt[i]); /* (7) */                                 \
                } else {                                                                     \
                    pt[i] = pt[i] + neg_lr * gi / d; /* (6), (7) */                          \
                }                                                                            \
            }                                                                                \
        }                                                                                    \
    }                                                                                        \
    void twinopt_rmsprop_##SUFFIX(int flags, int64_t n_tensors, T **p, T **g, T **nu, T **mu, \
                                  T **buf, const int64_t *numel, const double *bias,          \
                                  double alpha, double lr, double eps, double wd,             \
                                  double momentum, int n_threads) {                           \
        PRAGMA(omp parallel num_threads(n_threads))                                          \
        switch (flags & (N_FLAGS - 1)) {                                                     \
            CASES64(rmsprop_##SUFFIX##_body, n_tensors, p, g, nu, mu, buf, numel, bias, alpha, \
                    lr, eps, wd, momentum)                                                   \
        }                                                                                    \
    }

/* ------------------------------------------------------------- global RMSprop-ODE, two passes */

/* Pass 1: the squared norm of the effective gradient (and, centered, the gradient EMA's update
 * and its squared norm), accumulated in double. */
#define DEFINE_GLOBAL_NORMS(T, SUFFIX, FMA)                                                   \
    static inline __attribute__((always_inline)) void global_norms_##SUFFIX##_body(          \
        const int flags, int64_t n_tensors, T **p, T **g, T **mu, const int64_t *numel,      \
        double alpha_, double wd_, double *sq, double *mu_sq) {                              \
        const T one_minus_alpha = (T)(1.0 - alpha_), wd = (T)wd_;                             \
        double s = 0.0, ms = 0.0;                                                            \
        for (int64_t t = 0; t < n_tensors; t++) {                                            \
            const T *restrict pt = p[t], *restrict gt = g[t];                                 \
            T *restrict mut = (flags & F_CENTERED) ? mu[t] : 0;                              \
            int64_t lo, hi;                                                                  \
            share(numel[t], &lo, &hi);                                                       \
            PRAGMA(omp simd reduction(+ : s, ms))                                            \
            for (int64_t i = lo; i < hi; i++) {                                              \
                T gi = gt[i];                                                                \
                if (flags & F_MAXIMIZE) gi = -gi;                                            \
                if (flags & F_WEIGHT_DECAY) gi = FMA(wd, pt[i], gi);                         \
                s += (double)gi * (double)gi;                                                \
                if (flags & F_CENTERED) {                                                    \
                    const T m = LERP(T, FMA, mut[i], gi, one_minus_alpha); /* (2) */         \
                    mut[i] = m;                                                              \
                    ms += (double)m * (double)m;                                             \
                }                                                                            \
            }                                                                                \
        }                                                                                    \
        *sq += s;                                                                            \
        *mu_sq += ms;                                                                        \
    }                                                                                        \
    void twinopt_global_norms_##SUFFIX(int flags, int64_t n_tensors, T **p, T **g, T **mu,   \
                                       const int64_t *numel, double alpha, double wd,          \
                                       double *out, int n_threads) {                          \
        double sq = 0.0, mu_sq = 0.0;                                                        \
        PRAGMA(omp parallel num_threads(n_threads) reduction(+ : sq, mu_sq))                 \
        switch (flags & (F_MAXIMIZE | F_WEIGHT_DECAY | F_CENTERED)) {                        \
            CASES8(0, global_norms_##SUFFIX##_body, n_tensors, p, g, mu, numel, alpha, wd,    \
                   &sq, &mu_sq)                                                              \
        }                                                                                    \
        out[0] = sq;                                                                         \
        out[1] = mu_sq;                                                                      \
    }

/* Pass 2: d = g / denom (6), the momentum buffer, theta -= lr * d (7). */
#define DEFINE_GLOBAL_APPLY(T, SUFFIX, FMA)                                                   \
    static inline __attribute__((always_inline)) void global_apply_##SUFFIX##_body(          \
        const int flags, int64_t n_tensors, T **p, T **g, T **buf, const int64_t *numel,     \
        double denom_, double lr_, double wd_, double momentum_) {                           \
        const T denom = (T)denom_, neg_lr = (T)(-lr_), wd = (T)wd_, momentum = (T)momentum_;  \
        for (int64_t t = 0; t < n_tensors; t++) {                                            \
            T *restrict pt = p[t];                                                           \
            const T *restrict gt = g[t];                                                     \
            T *restrict buft = (flags & F_MOMENTUM) ? buf[t] : 0;                            \
            int64_t lo, hi;                                                                  \
            share(numel[t], &lo, &hi);                                                       \
            PRAGMA(omp simd)                                                                 \
            for (int64_t i = lo; i < hi; i++) {                                              \
                T gi = gt[i];                                                                \
                if (flags & F_MAXIMIZE) gi = -gi;                                            \
                if (flags & F_WEIGHT_DECAY) gi = FMA(wd, pt[i], gi);                         \
                T d = gi / denom; /* (6) */                                                  \
                if (flags & F_MOMENTUM) {                                                    \
                    d = buft[i] * momentum + d;                                              \
                    buft[i] = d;                                                             \
                }                                                                            \
                pt[i] = FMA(neg_lr, d, pt[i]); /* (7) */                                     \
            }                                                                                \
        }                                                                                    \
    }                                                                                        \
    void twinopt_global_apply_##SUFFIX(int flags, int64_t n_tensors, T **p, T **g, T **buf,  \
                                       const int64_t *numel, double denom, double lr,          \
                                       double wd, double momentum, int n_threads) {           \
        PRAGMA(omp parallel num_threads(n_threads))                                          \
        switch (flags & (F_MAXIMIZE | F_WEIGHT_DECAY | F_MOMENTUM)) {                        \
            CASES4(0, global_apply_##SUFFIX##_body, n_tensors, p, g, buf, numel, denom, lr, wd, \
                   momentum)                                                                 \
            CASES4(F_MOMENTUM, global_apply_##SUFFIX##_body, n_tensors, p, g, buf, numel, denom, \
                   lr, wd, momentum)                                                         \
        }                                                                                    \
    }

/* ------------------------------------------------------------------------------------ Amos */

/* Hyper-parameters shared by a group's tensors (doubles; each kernel rounds them to T). */
typedef struct {
    double beta, eps, extra_l2, clip, momentum;
    double lr_sq;          /* xi_t ** 2 */
    double c_sqrt_lr;      /* c_coef * sqrt(xi_t) */
} amos_hyper;

/* Per-tensor values: 1 - beta**t, xi_t * eta, d_coef * sqrt(xi_t * eta). */
typedef struct {
    double bias, init_lr, d_sqrt_init_lr;
} amos_tensor;

/* torch.clamp(x, -clip, clip) when clip > 0 (NaN stays NaN). */
#define CLIP(T, x, clip)                                                                     \
    ((clip) > (T)0 ? ((x) < -(clip) ? -(clip) : ((x) > (clip) ? (clip) : (x))) : (x))

/* (9), torch's ``m.mul_(mu).add_(u, alpha=1 - mu)``, then theta += u. */
#define AMOS_APPLY(FMA, has_momentum, u, buft, pt, i, mu, one_minus_mu)                      \
    do {                                                                                     \
        if (has_momentum) {                                                                  \
            (u) = FMA((one_minus_mu), (u), (buft)[i] * (mu)); /* (9) */                      \
            (buft)[i] = (u);                                                                 \
        }                                                                                    \
        (pt)[i] = (pt)[i] + (u);                                                             \
    } while (0)

/* Full (element-wise) state: one pass reading theta, g, v, b (and m) and writing them. */
#define DEFINE_AMOS_FULL(T, SUFFIX, SQRT, FMA)                                                \
    static inline __attribute__((always_inline)) void amos_full_##SUFFIX##_body(             \
        const int has_momentum, int64_t n_tensors, T **p, T **g, T **v, T **b, T **buf,      \
        const int64_t *numel, const amos_tensor *per, const amos_hyper *h) {                 \
        const T beta = (T)h->beta, one_minus_beta = (T)(1.0 - h->beta), eps = (T)h->eps;      \
        const T l2 = (T)h->extra_l2, clip = (T)h->clip, mu = (T)h->momentum;                  \
        const T one_minus_mu = (T)(1.0 - h->momentum), lr_sq = (T)h->lr_sq;                   \
        const T c_sqrt_lr = (T)h->c_sqrt_lr;                                                  \
        for (int64_t t = 0; t < n_tensors; t++) {                                            \
            T *restrict pt = p[t], *restrict vt = v[t], *restrict bt = b[t];                  \
            const T *restrict gt = g[t];                                                     \
            T *restrict buft = has_momentum ? buf[t] : 0;                                    \
            const T bias = (T)per[t].bias, init_lr = (T)per[t].init_lr;                       \
            const T d_sqrt = (T)per[t].d_sqrt_init_lr;                                        \
            const int64_t n = numel[t];                                                      \
            int64_t lo, hi;                                                                  \
            share(n, &lo, &hi);                                                              \
            PRAGMA(omp simd)                                     \
            for (int64_t i = lo; i < hi; i++) {                                                \
                const T gi = CLIP(T, gt[i], clip); /* (0) */                                 \
                const T m2 = gi * gi;              /* (1) */                                 \
                const T vi = vt[i] * beta + m2 * one_minus_beta; /* (2) */                   \
                const T r = bias / (vi > eps ? vi : eps);        /* (3) */                   \
                const T bi = bt[i];                                                          \
                const T c = (T)1 / SQRT((T)1 + c_sqrt_lr * bi); /* (4) */                    \
                const T gamma = c * lr_sq * r * m2;              /* (5) */                   \
                const T d = (T)1 / ((T)1 + d_sqrt * bi);         /* (6) */                   \
                T u = d * ((((T)-0.5) * gamma - l2) * pt[i] - init_lr * SQRT(r) * gi); /* (7) */ \
                vt[i] = vi;                                                                  \
                bt[i] = bi + gamma * ((T)1 + bi); /* (8) */                                  \
                AMOS_APPLY(FMA, has_momentum, u, buft, pt, i, mu, one_minus_mu);             \
            }                                                                                \
        }                                                                                    \
    }                                                                                        \
    void twinopt_amos_full_##SUFFIX(int has_momentum, int64_t n_tensors, T **p, T **g, T **v, \
                                    T **b, T **buf, const int64_t *numel,                     \
                                    const amos_tensor *per, const amos_hyper *h,              \
                                    int n_threads) {                                          \
        PRAGMA(omp parallel num_threads(n_threads))                                          \
        if (has_momentum)                                                                    \
            amos_full_##SUFFIX##_body(1, n_tensors, p, g, v, b, buf, numel, per, h);         \
        else                                                                                 \
            amos_full_##SUFFIX##_body(0, n_tensors, p, g, v, b, buf, numel, per, h);         \
    }

/* One v, b per tensor (state shape ()): the mean square of each clipped gradient (1), the
 * scalar state update (2)-(6), (8), then one pass theta += d (a theta - q g) (7), (9).
 * ``v`` and ``b`` point at each tensor's 0-d state; ``sums``, ``coef_p``, ``coef_g`` and ``dt``
 * are scratch arrays of ``n_tensors`` entries. */
#define DEFINE_AMOS_SCALAR(T, SUFFIX, SQRT, FMA)                                              \
    static inline __attribute__((always_inline)) void amos_scalar_##SUFFIX##_apply(          \
        const int has_momentum, int64_t n_tensors, T **p, T **g, T **buf,                    \
        const int64_t *numel, const T *coef_p, const T *coef_g, const T *dt, T clip, T mu,   \
        T one_minus_mu) {                                                                    \
        for (int64_t t = 0; t < n_tensors; t++) {                                            \
            T *restrict pt = p[t];                                                           \
            const T *restrict gt = g[t];                                                     \
            T *restrict buft = has_momentum ? buf[t] : 0;                                    \
            const T a = coef_p[t], q = coef_g[t], d = dt[t];                                 \
            const int64_t n = numel[t];                                                      \
            int64_t lo, hi;                                                                  \
            share(n, &lo, &hi);                                                              \
            PRAGMA(omp simd)                                     \
            for (int64_t i = lo; i < hi; i++) {                                                \
                const T gi = CLIP(T, gt[i], clip);                                           \
                T u = d * (a * pt[i] - q * gi); /* (7) */                                    \
                AMOS_APPLY(FMA, has_momentum, u, buft, pt, i, mu, one_minus_mu);             \
            }                                                                                \
        }                                                                                    \
    }                                                                                        \
    void twinopt_amos_scalar_##SUFFIX(int has_momentum, int64_t n_tensors, T **p, T **g,      \
                                      T **v, T **b, T **buf, const int64_t *numel,            \
                                      const amos_tensor *per, const amos_hyper *h,            \
                                      double *sums, T *coef_p, T *coef_g, T *dt,              \
                                      int n_threads) {                                        \
        const T clip = (T)h->clip, mu = (T)h->momentum, one_minus_mu = (T)(1.0 - h->momentum); \
        for (int64_t t = 0; t < n_tensors; t++) sums[t] = 0.0;                               \
        PRAGMA(omp parallel num_threads(n_threads))                                          \
        {                                                                                    \
            for (int64_t t = 0; t < n_tensors; t++) {                                        \
                const T *restrict gt = g[t];                                                 \
                const int64_t n = numel[t];                                                  \
                double s = 0.0;                                                              \
                int64_t lo, hi;                                                              \
                share(n, &lo, &hi);                                                          \
                PRAGMA(omp simd reduction(+ : s))                       \
                for (int64_t i = lo; i < hi; i++) {                                            \
                    const T gi = CLIP(T, gt[i], clip);                                       \
                    s += (double)gi * (double)gi;                                            \
                }                                                                            \
                PRAGMA(omp atomic)                                                           \
                sums[t] += s;                                                                \
            }                                                                                \
            PRAGMA(omp barrier)                                                              \
            PRAGMA(omp single)                                                               \
            for (int64_t t = 0; t < n_tensors; t++) {                                        \
                const T m2 = (T)(sums[t] / (double)(numel[t] > 0 ? numel[t] : 1)); /* (1) */ \
                const T beta = (T)h->beta, eps = (T)h->eps;                                  \
                const T vi = *v[t] * beta + m2 * (T)(1.0 - h->beta); /* (2) */               \
                const T r = (T)per[t].bias / (vi > eps ? vi : eps);   /* (3) */               \
                const T bi = *b[t];                                                          \
                const T c = (T)1 / SQRT((T)1 + (T)h->c_sqrt_lr * bi); /* (4) */              \
                const T gamma = c * (T)h->lr_sq * r * m2;              /* (5) */             \
                dt[t] = (T)1 / ((T)1 + (T)per[t].d_sqrt_init_lr * bi); /* (6) */             \
                coef_p[t] = ((T)-0.5) * gamma - (T)h->extra_l2;                              \
                coef_g[t] = (T)per[t].init_lr * SQRT(r);                                     \
                *v[t] = vi;                                                                  \
                *b[t] = bi + gamma * ((T)1 + bi); /* (8) */                                  \
            }                                                                                \
            if (has_momentum)                                                                \
                amos_scalar_##SUFFIX##_apply(1, n_tensors, p, g, buf, numel, coef_p, coef_g, \
                                             dt, clip, mu, one_minus_mu);                    \
            else                                                                             \
                amos_scalar_##SUFFIX##_apply(0, n_tensors, p, g, buf, numel, coef_p, coef_g, \
                                             dt, clip, mu, one_minus_mu);                    \
        }                                                                                    \
    }

/* ---------------------------------------------------------------------- MGS proposal (3)-(4) */

/* Row sums in float64 a chunk of entries at a time (vectorized within a chunk, the chunks'
 * sums added in order): as accurate as torch's blocked row sums, and the same bits whatever
 * the number of threads (a row is never split). */
#define MGS_CHUNK 1024

/* Row flags: the block has a guide, this row (candidate) is guided, weighted sums (else
 * unweighted, then times -1/2). */
#define M_GUIDE 1
#define M_GUIDED 2
#define M_WEIGHTS 4

#define MGS_SEGMENT(F, SUFFIX, ...) mgs_segment_##SUFFIX(F, __VA_ARGS__)

/* (3) ``eps_k = m_k g + s z_k`` for one block of parameters of one dtype, one segment per
 * parameter (``z`` and ``eps`` as ``(K, numel)`` arrays per parameter; under ``antithetic``
 * ``z`` has ``K / 2`` rows, row ``r`` of ``eps`` using row ``r / 2``, negated for odd ``r``),
 * in torch's operations: ``(T)s * z``, then ``+ g`` for a guided candidate or ``+ 0`` for
 * the others (so ``-0`` becomes ``+0``, as torch.where gives it), or nothing when the block
 * has no guide. From the same pass the two sums of (4) per candidate, in float64 over every
 * segment: ``a_k = sum w eps^2`` and ``b_k = sum w (eps - g)^2``, each product rounded as
 * torch rounds ``sq * w``, with the segment's ``w = -1/(2 s^2)`` (computed by the caller),
 * or unweighted and then times ``-1/2`` when ``w`` is null (the unit-variance form). ``eps``
 * may be ``z`` itself (in place) when not antithetic. */
#define DEFINE_MGS_PROPOSE(T, SUFFIX)                                                        \
    static inline __attribute__((always_inline)) void mgs_segment_##SUFFIX(                  \
        const int f, int64_t n, T sign, const T *zr, const T *restrict g, T s_, double w,    \
        T *er, double *a, double *b) {                                                       \
        const T s = s_;                                                                      \
        for (int64_t j0 = 0; j0 < n; j0 += MGS_CHUNK) {                                      \
            const int64_t j1 = j0 + MGS_CHUNK < n ? j0 + MGS_CHUNK : n;                      \
            double ca = 0.0, cb = 0.0;                                                       \
            PRAGMA(omp simd reduction(+ : ca, cb))                                           \
            for (int64_t j = j0; j < j1; j++) {                                              \
                const T prod = s * (sign * zr[j]);                                           \
                const T e = !(f & M_GUIDE) ? prod : (f & M_GUIDED) ? g[j] + prod : (T)0 + prod; \
                er[j] = e;                                                                   \
                const double x = (double)e;                                                  \
                const double d = (f & M_GUIDE) ? x - (double)g[j] : x;                       \
                ca += (f & M_WEIGHTS) ? (x * x) * w : x * x;                                 \
                cb += (f & M_WEIGHTS) ? (d * d) * w : d * d;                                 \
            }                                                                                \
            *a += ca;                                                                        \
            *b += cb;                                                                        \
        }                                                                                    \
    }                                                                                        \
    void twinopt_mgs_propose_##SUFFIX(int64_t k, int64_t n_segments, int antithetic,       \
                                      T **z, T **eps, T **g, const int64_t *numel,         \
                                      const double *s, const double *w,                    \
                                      const uint8_t *mask, double *a, double *b,           \
                                      int n_threads) {                                     \
        PRAGMA(omp parallel for num_threads(n_threads) schedule(static))                     \
        for (int64_t r = 0; r < k; r++) {                                                    \
            const int f = (g != 0 ? M_GUIDE : 0) | (g != 0 && mask[r] ? M_GUIDED : 0) |      \
                          (w != 0 ? M_WEIGHTS : 0);                                          \
            /* -z exactly for the second of an antithetic pair; 1 * z is z */                \
            const T sign = (antithetic && (r & 1)) ? (T)-1 : (T)1;                           \
            const int64_t row = antithetic ? r / 2 : r;                                      \
            double sum_a = 0.0, sum_b = 0.0;                                                 \
            for (int64_t t = 0; t < n_segments; t++) {                                       \
                const int64_t n = numel[t];                                                  \
                const T *gt = g != 0 ? g[t] : 0;                                             \
                const T st = (T)s[t];                                                        \
                const double wt = w != 0 ? w[t] : 0.0;                                      \
                switch (f) {                                                                 \
                    CASES8(0, MGS_SEGMENT, SUFFIX, n, sign, z[t] + row * n, gt, st, wt,      \
                           eps[t] + r * n, &sum_a, &sum_b)                                   \
                }                                                                            \
            }                                                                                \
            a[r] = (f & M_WEIGHTS) ? sum_a : sum_a * -0.5;                                   \
            b[r] = (f & M_WEIGHTS) ? sum_b : sum_b * -0.5;                                   \
        }                                                                                    \
    }

#define FMA_F(a, b, c) fmaf((a), (b), (c))
#define FMA_D(a, b, c) fma((a), (b), (c))

DEFINE_RMSPROP(float, f32, sqrtf, FMA_F)
DEFINE_RMSPROP(double, f64, sqrt, FMA_D)
DEFINE_GLOBAL_NORMS(float, f32, FMA_F)
DEFINE_GLOBAL_NORMS(double, f64, FMA_D)
DEFINE_GLOBAL_APPLY(float, f32, FMA_F)
DEFINE_GLOBAL_APPLY(double, f64, FMA_D)
DEFINE_AMOS_FULL(float, f32, sqrtf, FMA_F)
DEFINE_AMOS_FULL(double, f64, sqrt, FMA_D)
DEFINE_AMOS_SCALAR(float, f32, sqrtf, FMA_F)
DEFINE_AMOS_SCALAR(double, f64, sqrt, FMA_D)
DEFINE_MGS_PROPOSE(float, f32)
DEFINE_MGS_PROPOSE(double, f64)

/* The ABI version the Python side checks (bump on any signature change). */
int twinopt_abi(void) { return 6; }
