/* Complex double-precision forward FFT (see fft_kernel.h): a radix-4 Stockham autosort
 * transform, with one radix-2 stage last when log2 N is odd.
 *
 * Stockham keeps every stage a streaming pass (no bit reversal): a stage of sub-length L
 * (L = N, N/4, N/16, ...) and stride s = N / L reads the four quarters of each sub-sequence,
 *     a = x[q + s p], b = x[q + s (p + L/4)], c = x[q + s (p + L/2)], d = x[q + s (p + 3L/4)]
 * for p < L/4, q < s, and writes the radix-4 butterfly, twiddled by w = exp(-2 pi i p / L):
 *     y[q + s (4p)]     = (a + c) + (b + d)
 *     y[q + s (4p + 1)] = w   ((a - c) - i (b - d))
 *     y[q + s (4p + 2)] = w^2 ((a + c) - (b + d))
 *     y[q + s (4p + 3)] = w^3 ((a - c) + i (b - d))
 * then L /= 4, s *= 4. When L = 2 is left, y[q] = x[q] + x[q + s], y[q + s] = x[q] - x[q + s].
 * The passes ping-pong between out and the plan's work buffer, arranged so that the last
 * one writes out. The twiddles of each stage are precomputed (w, w^2, w^3 interleaved per
 * p, from cos/sin of the exact angle for the first octant and by symmetry elsewhere, never by
 * recurrence) so the inner loops only multiply. */
#define _POSIX_C_SOURCE 200809L
#include "fft_kernel.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct vws_fft_plan {
    size_t n;
    int stages4;     /* radix-4 stages */
    int radix2;      /* 1: a final radix-2 stage */
    double *tw;      /* per radix-4 stage, for p < L/4: w, w^2, w^3 as (re, im): 6 doubles */
    double *work;    /* 2n doubles */
};

int vws_fft_size_ok(size_t n)
{
    return n >= ((size_t)1 << VWS_FFT_MIN_LOG2) && n <= ((size_t)1 << VWS_FFT_MAX_LOG2) &&
           (n & (n - 1)) == 0;
}

static void *alloc64(size_t bytes)
{
    void *p = NULL;
    if (posix_memalign(&p, 64, bytes ? bytes : 64) != 0)
        return NULL;
    return p;
}

vws_fft_plan *vws_fft_plan_create(size_t n)
{
    if (!vws_fft_size_ok(n)) {
        errno = EINVAL;
        return NULL;
    }
    vws_fft_plan *plan = calloc(1, sizeof *plan);
    if (!plan) {
        errno = ENOMEM;
        return NULL;
    }
    int log2n = 0;
    while (((size_t)1 << log2n) < n)
        log2n++;
    plan->n = n;
    plan->stages4 = log2n / 2;
    plan->radix2 = log2n % 2;
    size_t tw_doubles = 0;
    for (size_t len = n; len >= 4; len /= 4)
        tw_doubles += 6 * (len / 4);
    plan->tw = alloc64(tw_doubles * sizeof(double));
    plan->work = alloc64(2 * n * sizeof(double));
    if (!plan->tw || !plan->work) {
        vws_fft_plan_destroy(plan);
        errno = ENOMEM;
        return NULL;
    }
    /* cos and sin of 2 pi m / n for m in [0, n/4], from the library for m <= n/8 and by
     * the octant symmetry above it (so both are as exact as cos/sin themselves); any
     * other angle follows by quadrant in twiddle(). */
    const size_t q = n / 4;
    double *c = malloc((q + 1) * sizeof(double)), *sn = malloc((q + 1) * sizeof(double));
    if (!c || !sn) {
        free(c);
        free(sn);
        vws_fft_plan_destroy(plan);
        errno = ENOMEM;
        return NULL;
    }
    const double two_pi = 6.283185307179586476925286766559;
    for (size_t m = 0; m <= q / 2; m++) {
        double a = two_pi * (double)m / (double)n;
        c[m] = cos(a);
        sn[m] = sin(a);
    }
    for (size_t m = q / 2 + 1; m <= q; m++) {
        c[m] = sn[q - m];
        sn[m] = c[q - m];
    }
    double *t = plan->tw;
    for (size_t len = n, stride = 1; len >= 4; len /= 4, stride *= 4) {
        for (size_t p = 0; p < len / 4; p++) {
            for (size_t k = 1; k <= 3; k++) {
                /* w^k = exp(-2 pi i k p / len) = exp(-2 pi i m / n), m = k p stride < 3n/4 */
                size_t m = k * p * stride;
                double cm, sm;  /* cos, sin of 2 pi m / n */
                if (m <= q) {
                    cm = c[m];
                    sm = sn[m];
                } else if (m <= 2 * q) {
                    cm = -c[2 * q - m];
                    sm = sn[2 * q - m];
                } else {
                    cm = -c[m - 2 * q];
                    sm = -sn[m - 2 * q];
                }
                *t++ = cm;
                *t++ = -sm;
            }
        }
    }
    free(c);
    free(sn);
    return plan;
}

void vws_fft_plan_destroy(vws_fft_plan *plan)
{
    if (!plan)
        return;
    free(plan->tw);
    free(plan->work);
    free(plan);
}

size_t vws_fft_plan_size(const vws_fft_plan *plan)
{
    return plan->n;
}

/* One radix-4 pass of sub-length len, stride s (complex elements), x -> y. */
static void pass4(size_t len, size_t s, const double *restrict tw, const double *restrict x,
                  double *restrict y)
{
    const size_t m = len / 4;
    if (s == 1) {  /* first pass: the p loop is the long one */
        for (size_t p = 0; p < m; p++) {
            const double *w = tw + 6 * p;
            double ar = x[2 * p], ai = x[2 * p + 1];
            double br = x[2 * (p + m)], bi = x[2 * (p + m) + 1];
            double cr = x[2 * (p + 2 * m)], ci = x[2 * (p + 2 * m) + 1];
            double dr = x[2 * (p + 3 * m)], di = x[2 * (p + 3 * m) + 1];
            double apcr = ar + cr, apci = ai + ci, amcr = ar - cr, amci = ai - ci;
            double bpdr = br + dr, bpdi = bi + di, bmdr = br - dr, bmdi = bi - di;
            double t1r = amcr + bmdi, t1i = amci - bmdr;
            double t2r = apcr - bpdr, t2i = apci - bpdi;
            double t3r = amcr - bmdi, t3i = amci + bmdr;
            double *o = y + 8 * p;
            o[0] = apcr + bpdr;
            o[1] = apci + bpdi;
            o[2] = w[0] * t1r - w[1] * t1i;
            o[3] = w[0] * t1i + w[1] * t1r;
            o[4] = w[2] * t2r - w[3] * t2i;
            o[5] = w[2] * t2i + w[3] * t2r;
            o[6] = w[4] * t3r - w[5] * t3i;
            o[7] = w[4] * t3i + w[5] * t3r;
        }
        return;
    }
    for (size_t p = 0; p < m; p++) {
        const double w1r = tw[6 * p], w1i = tw[6 * p + 1];
        const double w2r = tw[6 * p + 2], w2i = tw[6 * p + 3];
        const double w3r = tw[6 * p + 4], w3i = tw[6 * p + 5];
        const double *restrict x0 = x + 2 * s * p;
        const double *restrict x1 = x + 2 * s * (p + m);
        const double *restrict x2 = x + 2 * s * (p + 2 * m);
        const double *restrict x3 = x + 2 * s * (p + 3 * m);
        double *restrict y0 = y + 2 * s * (4 * p);
        double *restrict y1 = y0 + 2 * s;
        double *restrict y2 = y0 + 4 * s;
        double *restrict y3 = y0 + 6 * s;
        if (p == 0) {  /* w = 1 */
            for (size_t q = 0; q < 2 * s; q += 2) {
                double ar = x0[q], ai = x0[q + 1], br = x1[q], bi = x1[q + 1];
                double cr = x2[q], ci = x2[q + 1], dr = x3[q], di = x3[q + 1];
                double apcr = ar + cr, apci = ai + ci, amcr = ar - cr, amci = ai - ci;
                double bpdr = br + dr, bpdi = bi + di, bmdr = br - dr, bmdi = bi - di;
                y0[q] = apcr + bpdr;
                y0[q + 1] = apci + bpdi;
                y1[q] = amcr + bmdi;
                y1[q + 1] = amci - bmdr;
                y2[q] = apcr - bpdr;
                y2[q + 1] = apci - bpdi;
                y3[q] = amcr - bmdi;
                y3[q + 1] = amci + bmdr;
            }
            continue;
        }
        for (size_t q = 0; q < 2 * s; q += 2) {
            double ar = x0[q], ai = x0[q + 1], br = x1[q], bi = x1[q + 1];
            double cr = x2[q], ci = x2[q + 1], dr = x3[q], di = x3[q + 1];
            double apcr = ar + cr, apci = ai + ci, amcr = ar - cr, amci = ai - ci;
            double bpdr = br + dr, bpdi = bi + di, bmdr = br - dr, bmdi = bi - di;
            double t1r = amcr + bmdi, t1i = amci - bmdr;
            double t2r = apcr - bpdr, t2i = apci - bpdi;
            double t3r = amcr - bmdi, t3i = amci + bmdr;
            y0[q] = apcr + bpdr;
            y0[q + 1] = apci + bpdi;
            y1[q] = w1r * t1r - w1i * t1i;
            y1[q + 1] = w1r * t1i + w1i * t1r;
            y2[q] = w2r * t2r - w2i * t2i;
            y2[q + 1] = w2r * t2i + w2i * t2r;
            y3[q] = w3r * t3r - w3i * t3i;
            y3[q + 1] = w3r * t3i + w3i * t3r;
        }
    }
}

/* The final radix-2 pass (len = 2, s = n / 2). */
static void pass2(size_t s, const double *restrict x, double *restrict y)
{
    for (size_t q = 0; q < 2 * s; q += 2) {
        double ar = x[q], ai = x[q + 1], br = x[2 * s + q], bi = x[2 * s + q + 1];
        y[q] = ar + br;
        y[q + 1] = ai + bi;
        y[2 * s + q] = ar - br;
        y[2 * s + q + 1] = ai - bi;
    }
}

void vws_fft_execute(vws_fft_plan *plan, const double *in, double *out)
{
    const size_t n = plan->n;
    const int total = plan->stages4 + plan->radix2;
    /* Pass i (1-based) writes out when total - i is even, else work: the last writes out. */
    const double *src = in;
    if (in == out && (total - 1) % 2 == 0) {
        /* In place and the first pass would write over its own input: start from a copy. */
        memcpy(plan->work, in, 2 * n * sizeof(double));
        src = plan->work;
    }
    const double *tw = plan->tw;
    size_t len = n, s = 1;
    for (int i = 1; i <= total; i++) {
        double *dst = ((total - i) % 2 == 0) ? out : plan->work;
        if (len >= 4) {
            pass4(len, s, tw, src, dst);
            tw += 6 * (len / 4);
            len /= 4;
            s *= 4;
        } else {
            pass2(s, src, dst);
        }
        src = dst;
    }
}

double vws_fft_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

double vws_fft_time(vws_fft_plan *plan, const double *in, double *out, long iterations)
{
    double t0 = vws_fft_now();
    for (long i = 0; i < iterations; i++)
        vws_fft_execute(plan, in, out);
    return vws_fft_now() - t0;
}
