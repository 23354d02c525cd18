/* Complex double-precision forward FFT for power-of-two sizes 2^6..2^22 (vws issue 7).
 *
 * Plan/execute: a plan holds the twiddle factors for one size N and a work buffer of N
 * complex values; execute computes
 *     out[k] = sum_j in[j] * exp(-2 pi i j k / N),   k = 0..N-1
 * (numpy.fft.fft's convention, no scaling) on interleaved (re, im) doubles, the layout of
 * numpy's complex128. in == out (in place) and in != out (out of place, in left untouched)
 * both work; partly overlapping arrays do not. A plan may be used by one thread at a time
 * (the work buffer), any number of plans at once.
 *
 * C99 plus POSIX (posix_memalign, clock_gettime) and libm, nothing else: the same file builds
 * into the Python extension and into a small static executable. */
#ifndef VWS_FFT_KERNEL_H
#define VWS_FFT_KERNEL_H

#include <stddef.h>

#define VWS_FFT_MIN_LOG2 6
#define VWS_FFT_MAX_LOG2 22

typedef struct vws_fft_plan vws_fft_plan;

/* 1 if n is a power of two within 2^VWS_FFT_MIN_LOG2..2^VWS_FFT_MAX_LOG2, else 0. */
int vws_fft_size_ok(size_t n);

/* A plan for size n, or NULL: errno EINVAL (bad size) or ENOMEM. */
vws_fft_plan *vws_fft_plan_create(size_t n);
void vws_fft_plan_destroy(vws_fft_plan *plan);
size_t vws_fft_plan_size(const vws_fft_plan *plan);

/* One forward transform of plan->n points from in to out (each 2n doubles). */
void vws_fft_execute(vws_fft_plan *plan, const double *in, double *out);

/* Monotonic clock in seconds (CLOCK_MONOTONIC). */
double vws_fft_now(void);

/* Runs `iterations` transforms in -> out back to back and returns the seconds they took
 * together (vws_fft_now around the loop). */
double vws_fft_time(vws_fft_plan *plan, const double *in, double *out, long iterations);

#endif
