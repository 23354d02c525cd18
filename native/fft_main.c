/* vws-fft: the FFT benchmark harness (vws issue 7) as a small static executable, for guests
 * and workspaces without Python. Built by scripts/build-fft.sh:
 *     gcc -O3 -static -o vws-fft native/fft_main.c native/fft_kernel.c -lm
 *
 * Usage: vws-fft [--sizes 6-22|6,8,16] [--min-time SECONDS] [--repeat N] [--seed S]
 *
 * Sizes are given as log2 N (6..22). For each size the timing method is exactly that of
 * vws.native.fft_py.measure (benchFFT's):
 *   1. calibration: one run of `iterations` back-to-back out-of-place transforms, starting at
 *      iterations = 1 and doubling until one run lasts at least min_time seconds;
 *   2. then `repeats` further runs at that count (the calibration runs are not among them),
 *      the minimum kept:
 *        seconds_per_transform = min(runs) / iterations
 *        mflops = 5 N log2(N) / (seconds_per_transform * 1e6)
 *        spread = (max(runs) - min(runs)) / min(runs)
 *   Each run reads CLOCK_MONOTONIC twice (vws_fft_time in fft_kernel.c).
 *
 * Input: N complex values with standard-normal real and imaginary parts (Box-Muller over
 * splitmix64, seeded with the seed and N). Correctness: the kernel's result is checked, before
 * timing, against a plain recursive radix-2 Cooley-Tukey transform in this file (independent
 * of the kernel: direct cos/sin twiddles, no shared code); max_rel_error =
 * max |kernel - reference| / max |reference| must be <= 1e-10, else a message on stderr and
 * exit 1.
 *
 * Output: one JSON object per size per line (JSON Lines) on stdout:
 *   {"n":..., "log2n":..., "iterations":..., "seconds_per_transform":..., "mflops":...,
 *    "spread":..., "max_rel_error":..., "repeats":..., "runs":[seconds, ...],
 *    "min_time":..., "seed":..., "implementation":"static"}
 * Bad arguments: one line on stderr naming the argument and its allowed range, exit 2. */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fft_kernel.h"

#define PROG "vws-fft"
#define MAX_REL_ERROR 1e-10
/* Calibration gives up past this many iterations per run (a clock that does not advance). */
#define MAX_ITERATIONS (1LL << 40)
#define MAX_REPEAT 1000
#define MAX_MIN_TIME 3600.0
#define DEFAULT_MIN_TIME 0.1
#define DEFAULT_REPEAT 5
#define DEFAULT_SEED 0

static const double PI = 3.14159265358979323846264338327950288;

static void usage(FILE *f)
{
    fprintf(f, "usage: " PROG " [--sizes 6-22|6,8,16] [--min-time SECONDS] [--repeat N] [--seed S]\n"
               "  --sizes     log2 of the transform sizes, %d..%d: a range A-B or a list A,B,C (default %d-%d)\n"
               "  --min-time  seconds one timed run lasts at least, > 0 and <= %g (default %g)\n"
               "  --repeat    timed runs per size, the minimum kept, 1..%d (default %d)\n"
               "  --seed      input seed, an integer 0..18446744073709551615 (default %d)\n",
            VWS_FFT_MIN_LOG2, VWS_FFT_MAX_LOG2, VWS_FFT_MIN_LOG2, VWS_FFT_MAX_LOG2,
            MAX_MIN_TIME, DEFAULT_MIN_TIME, MAX_REPEAT, DEFAULT_REPEAT, DEFAULT_SEED);
}

static void bad_arg(const char *arg, const char *value, const char *allowed)
{
    if (value)
        fprintf(stderr, PROG ": bad %s '%s': %s\n", arg, value, allowed);
    else
        fprintf(stderr, PROG ": %s needs a value: %s\n", arg, allowed);
    exit(2);
}

/* ---- arguments ---- */

static const char SIZES_ALLOWED[] =
    "log2 sizes from 6 to 22, as a range A-B (A <= B) or a list A,B,C";

/* A log2 size from s[0..len), or -1. */
static int parse_log2(const char *s, size_t len)
{
    if (len == 0 || len > 2)
        return -1;
    int v = 0;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (s[i] - '0');
    }
    return (v >= VWS_FFT_MIN_LOG2 && v <= VWS_FFT_MAX_LOG2) ? v : -1;
}

/* Fills sizes[] (log2 values, in the order given) and returns their count; exits 2 when bad. */
static int parse_sizes(const char *value, int *sizes)
{
    int count = 0;
    const char *dash = strchr(value, '-');
    if (dash && !strchr(value, ',')) {
        int a = parse_log2(value, (size_t)(dash - value));
        int b = parse_log2(dash + 1, strlen(dash + 1));
        if (a < 0 || b < 0 || a > b)
            bad_arg("--sizes", value, SIZES_ALLOWED);
        for (int k = a; k <= b; k++)
            sizes[count++] = k;
        return count;
    }
    const char *p = value;
    for (;;) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        int k = parse_log2(p, len);
        if (k < 0 || count >= 64)
            bad_arg("--sizes", value, SIZES_ALLOWED);
        sizes[count++] = k;
        if (!comma)
            break;
        p = comma + 1;
    }
    return count;
}

static double parse_min_time(const char *value)
{
    char *end;
    errno = 0;
    double v = strtod(value, &end);
    if (errno || end == value || *end || !(v > 0) || !(v <= MAX_MIN_TIME))
        bad_arg("--min-time", value, "seconds, a number > 0 and <= 3600");
    return v;
}

static int parse_repeat(const char *value)
{
    char *end;
    errno = 0;
    long v = strtol(value, &end, 10);
    if (errno || end == value || *end || v < 1 || v > MAX_REPEAT)
        bad_arg("--repeat", value, "an integer from 1 to 1000");
    return (int)v;
}

static uint64_t parse_seed(const char *value)
{
    char *end;
    errno = 0;
    if (value[0] < '0' || value[0] > '9')  /* strtoull takes "-1" */
        bad_arg("--seed", value, "an integer from 0 to 18446744073709551615");
    unsigned long long v = strtoull(value, &end, 10);
    if (errno || end == value || *end)
        bad_arg("--seed", value, "an integer from 0 to 18446744073709551615");
    return (uint64_t)v;
}

/* ---- input ---- */

static uint64_t splitmix64(uint64_t *state)
{
    uint64_t z = (*state += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

/* Uniform in (0, 1]. */
static double uniform(uint64_t *state)
{
    return ((double)(splitmix64(state) >> 11) + 1.0) * (1.0 / 9007199254740992.0);
}

/* 2n doubles, interleaved (re, im), each standard normal (Box-Muller). */
static void harness_input(double *x, size_t n, uint64_t seed)
{
    uint64_t state = seed ^ (0xD1B54A32D192ED03ULL * (uint64_t)n);
    for (size_t i = 0; i < 2 * n; i += 2) {
        double r = sqrt(-2.0 * log(uniform(&state)));
        double t = 2.0 * PI * uniform(&state);
        x[i] = r * cos(t);
        x[i + 1] = r * sin(t);
    }
}

/* ---- reference transform: plain recursive radix-2 decimation in time ---- */

/* out[0..m) = DFT of in[0], in[stride], ..., in[(m-1) stride] (complex, interleaved);
 * tw[k] = exp(-2 pi i k / n) for k < n/2, and this level uses tw[k * (n/m)]. */
static void ref_rec(const double *in, size_t stride, double *out, size_t m,
                    const double *tw, size_t n)
{
    if (m == 1) {
        out[0] = in[0];
        out[1] = in[1];
        return;
    }
    size_t h = m / 2, step = n / m;
    ref_rec(in, 2 * stride, out, h, tw, n);                  /* even samples */
    ref_rec(in + 2 * stride, 2 * stride, out + 2 * h, h, tw, n); /* odd samples */
    for (size_t k = 0; k < h; k++) {
        double wr = tw[2 * k * step], wi = tw[2 * k * step + 1];
        double er = out[2 * k], ei = out[2 * k + 1];
        double or_ = out[2 * (k + h)], oi = out[2 * (k + h) + 1];
        double tr = or_ * wr - oi * wi, ti = or_ * wi + oi * wr;
        out[2 * k] = er + tr;
        out[2 * k + 1] = ei + ti;
        out[2 * (k + h)] = er - tr;
        out[2 * (k + h) + 1] = ei - ti;
    }
}

/* out = DFT of in (n complex values); 0, or -1 when out of memory. */
static int reference_fft(const double *in, double *out, size_t n)
{
    double *tw = malloc(n * sizeof(double));  /* n/2 complex */
    if (!tw)
        return -1;
    for (size_t k = 0; k < n / 2; k++) {
        double a = -2.0 * PI * (double)k / (double)n;
        tw[2 * k] = cos(a);
        tw[2 * k + 1] = sin(a);
    }
    ref_rec(in, 1, out, n, tw, n);
    free(tw);
    return 0;
}

/* max |a - b| / max |b| over n complex values. */
static double rel_error(const double *a, const double *b, size_t n)
{
    double diff = 0, norm = 0;
    for (size_t i = 0; i < 2 * n; i += 2) {
        double d = hypot(a[i] - b[i], a[i + 1] - b[i + 1]);
        double m = hypot(b[i], b[i + 1]);
        if (!(d <= diff))  /* also NaN */
            diff = d;
        if (m > norm)
            norm = m;
    }
    return norm > 0 ? diff / norm : (diff > 0 || diff != diff ? INFINITY : 0.0);
}

/* ---- harness ---- */

static void print_number(double v)
{
    if (isfinite(v))
        printf("%.17g", v);
    else
        fputs("null", stdout);  /* JSON has no inf/nan */
}

/* Measures one size and prints its line; returns the exit status (0 or 1). */
static int run_size(int log2n, double min_time, int repeats, uint64_t seed)
{
    size_t n = (size_t)1 << log2n;
    double *in = NULL, *out = NULL, *ref = NULL, *runs = NULL;
    vws_fft_plan *plan = NULL;
    int status = 1;

    if (posix_memalign((void **)&in, 64, 2 * n * sizeof(double)) ||
        posix_memalign((void **)&out, 64, 2 * n * sizeof(double)) ||
        !(ref = malloc(2 * n * sizeof(double))) || !(runs = malloc((size_t)repeats * sizeof(double))) ||
        !(plan = vws_fft_plan_create(n))) {
        fprintf(stderr, PROG ": size 2^%d = %zu: %s\n", log2n, n, strerror(errno ? errno : ENOMEM));
        goto done;
    }

    harness_input(in, n, seed);
    vws_fft_execute(plan, in, out);
    if (reference_fft(in, ref, n)) {
        fprintf(stderr, PROG ": size 2^%d = %zu: reference transform: %s\n", log2n, n, strerror(ENOMEM));
        goto done;
    }
    double err = rel_error(out, ref, n);
    if (!(err <= MAX_REL_ERROR)) {
        fprintf(stderr, PROG ": FFT of size 2^%d = %zu: relative error %.3g against the reference "
                        "radix-2 transform exceeds %g\n", log2n, n, err, MAX_REL_ERROR);
        goto done;
    }

    long long iterations = 1;
    while (vws_fft_time(plan, in, out, (long)iterations) < min_time) {
        iterations *= 2;
        if (iterations > MAX_ITERATIONS) {
            fprintf(stderr, PROG ": %lld transforms of size %zu took under %g s: is the clock advancing?\n",
                    iterations, n, min_time);
            goto done;
        }
    }
    for (int r = 0; r < repeats; r++)
        runs[r] = vws_fft_time(plan, in, out, (long)iterations);
    double best = runs[0], worst = runs[0];
    for (int r = 1; r < repeats; r++) {
        if (runs[r] < best)
            best = runs[r];
        if (runs[r] > worst)
            worst = runs[r];
    }
    double per = best / (double)iterations;
    double mflops = per > 0 ? 5.0 * (double)n * (double)log2n / (per * 1e6) : INFINITY;
    double spread = best > 0 ? (worst - best) / best : 0.0;

    printf("{\"n\": %zu, \"log2n\": %d, \"iterations\": %lld, \"seconds_per_transform\": ", n, log2n, iterations);
    print_number(per);
    fputs(", \"mflops\": ", stdout);
    print_number(mflops);
    fputs(", \"spread\": ", stdout);
    print_number(spread);
    fputs(", \"max_rel_error\": ", stdout);
    print_number(err);
    printf(", \"repeats\": %d, \"runs\": [", repeats);
    for (int r = 0; r < repeats; r++) {
        if (r)
            fputs(", ", stdout);
        print_number(runs[r]);
    }
    fputs("], \"min_time\": ", stdout);
    print_number(min_time);
    printf(", \"seed\": %llu, \"implementation\": \"static\"}\n", (unsigned long long)seed);
    if (fflush(stdout) != 0) {
        fprintf(stderr, PROG ": writing stdout: %s\n", strerror(errno));
        goto done;
    }
    status = 0;

done:
    vws_fft_plan_destroy(plan);
    free(in);
    free(out);
    free(ref);
    free(runs);
    return status;
}

int main(int argc, char **argv)
{
    int sizes[64];
    int count = 0;
    double min_time = DEFAULT_MIN_TIME;
    int repeats = DEFAULT_REPEAT;
    uint64_t seed = DEFAULT_SEED;

    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        if (!strcmp(arg, "-h") || !strcmp(arg, "--help")) {
            usage(stdout);
            return 0;
        }
        static const char *const names[] = {"--sizes", "--min-time", "--repeat", "--seed"};
        static const char *const allowed[] = {SIZES_ALLOWED, "seconds, a number > 0 and <= 3600",
                                              "an integer from 1 to 1000",
                                              "an integer from 0 to 18446744073709551615"};
        int which = -1;
        const char *value = NULL;
        for (int k = 0; k < 4; k++) {
            size_t len = strlen(names[k]);
            if (!strncmp(arg, names[k], len) && (arg[len] == '\0' || arg[len] == '=')) {
                which = k;
                if (arg[len] == '=')
                    value = arg + len + 1;
                else if (i + 1 < argc)
                    value = argv[++i];
                else
                    bad_arg(names[k], NULL, allowed[k]);
                break;
            }
        }
        switch (which) {
        case 0: count = parse_sizes(value, sizes); break;
        case 1: min_time = parse_min_time(value); break;
        case 2: repeats = parse_repeat(value); break;
        case 3: seed = parse_seed(value); break;
        default:
            fprintf(stderr, PROG ": unknown argument '%s': allowed --sizes 6-22|6,8,16, "
                            "--min-time SECONDS (> 0, <= 3600), --repeat N (1..1000), --seed S\n", arg);
            return 2;
        }
    }
    if (count == 0)
        for (int k = VWS_FFT_MIN_LOG2; k <= VWS_FFT_MAX_LOG2; k++)
            sizes[count++] = k;

    for (int i = 0; i < count; i++)
        if (run_size(sizes[i], min_time, repeats, seed))
            return 1;
    return 0;
}
