/* The UDP hot loop of gslb, compiled: batched receive and send (recvmmsg/sendmmsg) and the
 * fast path of gslb.dns.answer.Answerer (`_fast`) over the same tables, byte for byte.
 *
 * What this file answers itself: the common query (one question, class IN, an optional OPT
 * whose options are walked: ECS used, COOKIE answered as gslb.dns.cookies does when cookies are on
 * (from its cache, or hashed here and remembered there), anything else ignored) whose reply is already encoded
 * in the answerer's State: a static entry, a negative (NXDOMAIN/REFUSED) entry, or a steered
 * service whose client network is located in the service's RankTable and whose (question,
 * ranking) pick is cached. Everything else, and anything this code is unsure of, goes back
 * to Python: `answerer.handle(wire, host, False)`, whose reply is sent in the same batch.
 *
 * Invariants: every read of a packet is bounds-checked against its length; a reply is built
 * only after its whole length is known to fit; any Python error while reading the tables
 * sends the packet to Python (which answers it or SERVFAILs it), never out of the loop.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>

#ifndef GSLB_FASTUDP_SOURCE
#define GSLB_FASTUDP_SOURCE "unknown" /* setup.py defines it: the source's sha256, 16 hex digits */
#endif

#define BATCH 64           /* datagrams per recvmmsg/sendmmsg */
#define RECV_SIZE 4096     /* as the Python loop: a query never needs more */
#define WAKE_SECONDS 0.5   /* server.UDP_WAKE: how often a waiting loop checks whether to stop */
#define REPLY_MAX 1232     /* a reply built here never exceeds the largest UDP limit */
#define OPT_HEAD 11        /* our OPT RR without options */
#define SAMPLE_MASK 63     /* gslb.dns.state.LATENCY_SAMPLE_MASK */
#define MAX_LABELS 128
#define RANK_CACHE 8
#define INFO_CACHE 32     /* entries whose parts one batch keeps at hand */
#define MAX_SECRETS 8     /* cookie secrets C checks against (gslb.config allows 3) */

typedef unsigned __int128 u128;

/* ---- names and types, looked up once ------------------------------------------------- */

static PyObject *s_state, *s_static, *s_negative, *s_refused, *s_index, *s_picks, *s_by_resolver,
    *s_counters, *s_ticks, *s_by_key, *s_by_answer, *s_query_log, *s_flag_bytes, *s_head, *s_head_opt, *s_body,
    *s_scoped, *s_udp_key, *s_answer_key, *s_ranks, *s_starts4, *s_ranks4, *s_starts6_hi, *s_starts6_lo,
    *s_ranks6, *s_default_rank, *s_names, *s_cuts, *s_wildcard_parents, *s_origin, *s_observe,
    *s_cookies, *s_rrl, *s_tc_size, *s_cache, *s_clock, *s_secrets, *s_dnssec, *s_signed;

static PyObject *EntryType;    /* gslb.dns.replies.Entry */
static PyObject *SteeredType;  /* gslb.dns.state.Steered: a service's question in State.static */
static PyObject *CookiesModule; /* gslb.dns.cookies: its `clock` (tests pin it) */
/* gslb.dns.cookies' constants (REMEMBER, LIFETIME, SKEW, ECHO, CACHE_LIMIT, VERSION), read with the types;
 * ck_ok 0: not readable, and a cookie C has not seen goes to Python. */
static long long ck_remember, ck_lifetime, ck_skew, ck_echo, ck_limit, ck_version;
static int ck_ok;

static long long module_int(PyObject *module, const char *name, int *ok) {
    PyObject *v = PyObject_GetAttrString(module, name);
    long long x = v != NULL && PyLong_Check(v) ? PyLong_AsLongLong(v) : -1;
    Py_XDECREF(v);
    if (x < 0) {
        PyErr_Clear();
        *ok = 0;
    }
    return x;
}

static int intern_names(void) {
#define NAME(var, text) if (!(var = PyUnicode_InternFromString(text))) return -1;
    NAME(s_state, "state") NAME(s_static, "static") NAME(s_negative, "negative") NAME(s_refused, "refused")
    NAME(s_index, "index") NAME(s_picks, "picks") NAME(s_by_resolver, "by_resolver")
    NAME(s_cookies, "cookies") NAME(s_rrl, "rrl") NAME(s_tc_size, "tc_size")
    NAME(s_cache, "cache") NAME(s_clock, "clock") NAME(s_secrets, "secrets")
    NAME(s_counters, "counters") NAME(s_ticks, "ticks") NAME(s_by_key, "by_key") NAME(s_by_answer, "by_answer")
    NAME(s_query_log, "query_log") NAME(s_flag_bytes, "flag_bytes") NAME(s_head, "head")
    NAME(s_head_opt, "head_opt") NAME(s_body, "body") NAME(s_scoped, "scoped")
    NAME(s_udp_key, "udp_key") NAME(s_answer_key, "answer_key") NAME(s_ranks, "ranks")
    NAME(s_starts4, "starts4") NAME(s_ranks4, "ranks4") NAME(s_starts6_hi, "starts6_hi")
    NAME(s_starts6_lo, "starts6_lo") NAME(s_ranks6, "ranks6") NAME(s_default_rank, "default_rank")
    NAME(s_names, "names") NAME(s_cuts, "cuts") NAME(s_wildcard_parents, "wildcard_parents")
    NAME(s_origin, "origin") NAME(s_observe, "observe") NAME(s_dnssec, "dnssec") NAME(s_signed, "signed")
#undef NAME
    return 0;
}

/* The types the tables hold, from gslb.dns.replies and gslb.dns.state, imported on first use. Anything else in a table
 * (UNCACHED above all) is not one of them, and goes to Python. */
static int load_types(void) {
    if (EntryType != NULL)
        return 0;
    PyObject *replies = PyImport_ImportModule("gslb.dns.replies");
    if (replies == NULL)
        return -1;
    PyObject *entry = PyObject_GetAttrString(replies, "Entry");
    Py_DECREF(replies);
    PyObject *state = entry ? PyImport_ImportModule("gslb.dns.state") : NULL;
    PyObject *steered = state ? PyObject_GetAttrString(state, "Steered") : NULL;
    Py_XDECREF(state);
    if (steered == NULL) {
        Py_XDECREF(entry);
        return -1;
    }
    PyObject *cookies = PyImport_ImportModule("gslb.dns.cookies");
    if (cookies == NULL) {
        Py_DECREF(entry);
        Py_DECREF(steered);
        return -1;
    }
    EntryType = entry;
    SteeredType = steered;
    CookiesModule = cookies;
    ck_ok = 1;
    ck_remember = module_int(cookies, "REMEMBER", &ck_ok);
    ck_lifetime = module_int(cookies, "LIFETIME", &ck_ok);
    ck_skew = module_int(cookies, "SKEW", &ck_ok);
    ck_echo = module_int(cookies, "ECHO", &ck_ok);
    ck_limit = module_int(cookies, "CACHE_LIMIT", &ck_ok);
    ck_version = module_int(cookies, "VERSION", &ck_ok);
    return 0;
}

/* ---- one batch's view of the answerer ------------------------------------------------ */

typedef struct {
    PyObject *owner;  /* the RankTable (strong) */
    Py_buffer starts4, ranks4, starts6_hi, starts6_lo, ranks6;
    Py_ssize_t n4, n6;
    long default_rank;
    int ok;
} Ranks;

/* What a reply needs from an Entry, read once per batch: the pointers stay valid while the
 * entry lives (its attributes are immutable bytes), and the cache holds a reference to it. */
typedef struct {
    PyObject *entry;          /* strong; NULL: a free slot */
    const char *flags[4];     /* 2 bytes each, by (RD | CD >> 3) of the query */
    const char *head, *head_opt; /* 8 bytes each */
    const char *body;
    Py_ssize_t body_len;
    int scoped;               /* 1: the located scope goes in the ECS echo */
    int signed_zone;          /* Entry.dnssec: a query with DO gets `signed` (None: Python signs it) */
    PyObject *udp_key, *answer_key, *signed_entry; /* strong */
} Info;

static void info_release(Info *info) {
    Py_CLEAR(info->entry);
    Py_CLEAR(info->udp_key);
    Py_CLEAR(info->answer_key);
    Py_CLEAR(info->signed_entry);
}

typedef struct {
    PyObject *answerer, *state, *statics, *negative, *refused, *index, *picks, *counters, *by_key, *by_answer;
    int by_resolver;
    int cookies;        /* state.cookies is not None: COOKIE options are answered */
    PyObject *cookie_cache; /* state.cookies.cache (strong); NULL: every COOKIE query goes to Python */
    long long cookie_now;   /* int(gslb.dns.cookies.clock()), read at the batch's first COOKIE query */
    int cookie_now_read;
    PyObject *secrets;      /* state.cookies.secrets (strong): the first makes cookies, all are accepted */
    const unsigned char *secret[MAX_SECRETS];
    int nsecrets;           /* 0: unreadable, a cookie not remembered goes to Python */
    Py_ssize_t tc_size; /* state.cookies.tc_size: longer replies without a valid cookie go to Python (TC) */
    int disabled;       /* 1: answer nothing here (query log on, or the tables unreadable) */
    long long ticks;    /* counters.ticks, kept here during a batch and written back */
    int ticks_dirty;
    Ranks ranks[RANK_CACHE];
    int nranks;
    Info infos[INFO_CACHE];
} Ctx;

typedef struct {
    int family;  /* 0: no address (a Python caller passed None), 4, 6 */
    unsigned char addr[16];
    PyObject *host; /* the address as recvfrom gives it (strong), made when first needed; NULL: not yet */
    const struct sockaddr_storage *sa; /* the loop's peer, to make `host` from; NULL: none */
    socklen_t sa_len;
} Source;

static int ctx_read_ticks(Ctx *c) {
    PyObject *t = PyObject_GetAttr(c->counters, s_ticks);
    if (t == NULL)
        return -1;
    c->ticks = PyLong_AsLongLong(t);
    Py_DECREF(t);
    if (c->ticks == -1 && PyErr_Occurred())
        return -1;
    c->ticks_dirty = 0;
    return 0;
}

static int ctx_flush_ticks(Ctx *c) {
    if (!c->ticks_dirty)
        return 0;
    PyObject *t = PyLong_FromLongLong(c->ticks);
    if (t == NULL)
        return -1;
    int r = PyObject_SetAttr(c->counters, s_ticks, t);
    Py_DECREF(t);
    c->ticks_dirty = 0;
    return r;
}

/* obj.name if it is a dict, else NULL (no error set). */
static PyObject *optional_dict(PyObject *obj, PyObject *name) {
    PyObject *value = PyObject_GetAttr(obj, name);
    if (value == NULL)
        PyErr_Clear();
    else if (!PyDict_Check(value))
        Py_CLEAR(value);
    return value;
}

static void ctx_open(Ctx *c, PyObject *answerer) {
    memset(c, 0, sizeof(*c));
    c->answerer = answerer;
    c->disabled = 1;
    PyObject *qlog = PyObject_GetAttr(answerer, s_query_log);
    if (qlog == NULL)
        goto fail;
    int logging = qlog != Py_None;
    Py_DECREF(qlog);
    if (logging)
        return; /* every query goes to Python, which logs it */
    if (!(c->counters = PyObject_GetAttr(answerer, s_counters)))
        goto fail;
    if (!(c->by_key = PyObject_GetAttr(c->counters, s_by_key)) || !PyDict_Check(c->by_key))
        goto fail;
    if (!(c->by_answer = PyObject_GetAttr(c->counters, s_by_answer)) || !PyDict_Check(c->by_answer))
        goto fail;
    if (!(c->state = PyObject_GetAttr(answerer, s_state)))
        goto fail;
    if (!(c->statics = PyObject_GetAttr(c->state, s_static)) || !PyDict_Check(c->statics))
        goto fail;
    /* Without these (tables of another shape), only what needs them goes to Python. */
    c->negative = optional_dict(c->state, s_negative);
    c->refused = optional_dict(c->state, s_refused);
    c->picks = optional_dict(c->state, s_picks);
    c->index = optional_dict(c->state, s_index);
    PyObject *by_resolver = PyObject_GetAttr(c->state, s_by_resolver);
    if (by_resolver == NULL)
        goto fail;
    c->by_resolver = PyObject_IsTrue(by_resolver);
    Py_DECREF(by_resolver);
    if (c->by_resolver < 0)
        goto fail;
    /* DNS Cookies and rate limiting are Python's (fastpath-spec.md): with state.rrl set every
     * packet goes there, with state.cookies set those with a COOKIE option. No such attribute: off. */
    PyObject *rrl = PyObject_GetAttr(c->state, s_rrl);
    PyErr_Clear();
    PyObject *cookies = PyObject_GetAttr(c->state, s_cookies);
    PyErr_Clear();
    int limited = rrl != NULL && rrl != Py_None;
    c->cookies = cookies != NULL && cookies != Py_None;
    if (c->cookies) {
        PyObject *size = PyObject_GetAttr(cookies, s_tc_size);
        c->tc_size = size != NULL && PyLong_Check(size) ? PyLong_AsSsize_t(size) : 1;  /* unreadable: all */
        Py_XDECREF(size);
        PyErr_Clear();
        c->cookie_cache = optional_dict(cookies, s_cache);
        PyObject *secrets = PyObject_GetAttr(cookies, s_secrets);
        if (secrets != NULL && PyTuple_Check(secrets) && PyTuple_GET_SIZE(secrets) <= MAX_SECRETS) {
            c->secrets = secrets;
            for (Py_ssize_t k = 0; k < PyTuple_GET_SIZE(secrets); k++) {
                PyObject *item = PyTuple_GET_ITEM(secrets, k);
                if (!PyBytes_CheckExact(item) || PyBytes_GET_SIZE(item) != 16) {
                    c->nsecrets = 0;
                    break;
                }
                c->secret[c->nsecrets++] = (const unsigned char *)PyBytes_AS_STRING(item);
            }
        } else {
            Py_XDECREF(secrets);
        }
        PyErr_Clear();
    }
    Py_XDECREF(rrl);
    Py_XDECREF(cookies);
    if (limited)
        return;
    if (load_types() < 0 || ctx_read_ticks(c) < 0)
        goto fail;
    c->disabled = 0;
    return;
fail:
    PyErr_Clear();
}

static void ranks_release(Ranks *r) {
    if (r->ok) {
        PyBuffer_Release(&r->starts4);
        PyBuffer_Release(&r->ranks4);
        PyBuffer_Release(&r->starts6_hi);
        PyBuffer_Release(&r->starts6_lo);
        PyBuffer_Release(&r->ranks6);
    }
    Py_CLEAR(r->owner);
    r->ok = 0;
}

static void ctx_close(Ctx *c) {
    if (!c->disabled && ctx_flush_ticks(c) < 0)
        PyErr_WriteUnraisable(c->answerer);
    for (int i = 0; i < c->nranks; i++)
        ranks_release(&c->ranks[i]);
    for (int i = 0; i < INFO_CACHE; i++)
        info_release(&c->infos[i]);
    c->nranks = 0;
    Py_CLEAR(c->state);
    Py_CLEAR(c->statics);
    Py_CLEAR(c->negative);
    Py_CLEAR(c->refused);
    Py_CLEAR(c->index);
    Py_CLEAR(c->picks);
    Py_CLEAR(c->counters);
    Py_CLEAR(c->by_key);
    Py_CLEAR(c->by_answer);
    Py_CLEAR(c->cookie_cache);
    Py_CLEAR(c->secrets);
}

/* ---- the RankTable ------------------------------------------------------------------- */

static int get_array(PyObject *table, PyObject *name, Py_buffer *view, Py_ssize_t itemsize) {
    PyObject *obj = PyObject_GetAttr(table, name);
    if (obj == NULL)
        return -1;
    int r = PyObject_GetBuffer(obj, view, PyBUF_FORMAT | PyBUF_ND);
    Py_DECREF(obj);
    if (r < 0)
        return -1;
    if (view->ndim != 1 || view->itemsize != itemsize) {
        PyBuffer_Release(view);
        PyErr_SetString(PyExc_TypeError, "unexpected RankTable array");
        return -1;
    }
    return 0;
}

/* The RankTable of a steered value, its arrays held for the batch; NULL (no error set) if unusable. */
static Ranks *ctx_ranks(Ctx *c, PyObject *table) {
    for (int i = 0; i < c->nranks; i++)
        if (c->ranks[i].owner == table)
            return c->ranks[i].ok ? &c->ranks[i] : NULL;
    if (c->nranks == RANK_CACHE) {
        ranks_release(&c->ranks[RANK_CACHE - 1]);
        c->nranks--;
    }
    Ranks *r = &c->ranks[c->nranks++];
    memset(r, 0, sizeof(*r));
    Py_INCREF(table);
    r->owner = table;
    Py_buffer *views[] = {&r->starts4, &r->ranks4, &r->starts6_hi, &r->starts6_lo, &r->ranks6};
    PyObject *names[] = {s_starts4, s_ranks4, s_starts6_hi, s_starts6_lo, s_ranks6};
    static const Py_ssize_t sizes[] = {4, 4, 8, 8, 4};
    int got = 0;
    for (; got < 5; got++)
        if (get_array(table, names[got], views[got], sizes[got]) < 0)
            goto fail;
    PyObject *def = PyObject_GetAttr(table, s_default_rank);
    if (def == NULL)
        goto fail;
    r->default_rank = PyLong_AsLong(def);
    Py_DECREF(def);
    if (r->default_rank < 0)
        goto fail;
    r->n4 = r->starts4.len / 4;
    r->n6 = r->starts6_hi.len / 8;
    if (r->n4 < 1 || r->ranks4.len / 4 != r->n4 || r->n6 < 1 || r->starts6_lo.len / 8 != r->n6 ||
        r->ranks6.len / 4 != r->n6 || ((uint32_t *)r->starts4.buf)[0] != 0 ||
        ((uint64_t *)r->starts6_hi.buf)[0] != 0 || ((uint64_t *)r->starts6_lo.buf)[0] != 0)
        goto fail;
    r->ok = 1;
    return r;
fail:
    PyErr_Clear();
    for (int i = 0; i < got; i++)
        PyBuffer_Release(views[i]);
    r->ok = 0; /* remembered as unusable for this batch: its queries go to Python */
    return NULL;
}

static int bit_length128(u128 x) {
    uint64_t hi = (uint64_t)(x >> 64), lo = (uint64_t)x;
    if (hi)
        return 128 - __builtin_clzll(hi);
    return lo ? 64 - __builtin_clzll(lo) : 0;
}

/* The ECS scope: the largest aligned block around `a` inside [lo, hi] (family of `bits` bits). */
static int scope_of(u128 a, u128 lo, u128 hi, u128 max, int bits) {
    int k1 = lo == 0 ? bits : bit_length128(a ^ (lo - 1)) - 1;
    int k2 = hi == max ? bits : bit_length128(a ^ (hi + 1)) - 1;
    return bits - (k1 < k2 ? k1 : k2);
}

static void locate4(const Ranks *r, uint32_t a, long *rank, int *scope) {
    const uint32_t *starts = (const uint32_t *)r->starts4.buf;
    Py_ssize_t lo = 0, hi = r->n4; /* bisect_right */
    while (lo < hi) {
        Py_ssize_t mid = lo + (hi - lo) / 2;
        if (a < starts[mid])
            hi = mid;
        else
            lo = mid + 1;
    }
    Py_ssize_t i = lo - 1; /* >= 0: starts[0] == 0 */
    *rank = ((const uint32_t *)r->ranks4.buf)[i];
    u128 first = starts[i];
    u128 last = i + 1 < r->n4 ? (u128)starts[i + 1] - 1 : 0xFFFFFFFFu;
    *scope = scope_of(a, first, last, 0xFFFFFFFFu, 32);
}

static void locate6(const Ranks *r, const unsigned char *addr, long *rank, int *scope) {
    static const unsigned char mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF};
    if (memcmp(addr, mapped, 12) == 0) {
        uint32_t a = (uint32_t)addr[12] << 24 | (uint32_t)addr[13] << 16 | (uint32_t)addr[14] << 8 | addr[15];
        locate4(r, a, rank, scope);
        *scope += 96;
        return;
    }
    u128 a = 0;
    for (int k = 0; k < 16; k++)
        a = a << 8 | addr[k];
    const uint64_t *shi = (const uint64_t *)r->starts6_hi.buf, *slo = (const uint64_t *)r->starts6_lo.buf;
    Py_ssize_t lo = 0, hi = r->n6;
    while (lo < hi) {
        Py_ssize_t mid = lo + (hi - lo) / 2;
        u128 s = (u128)shi[mid] << 64 | slo[mid];
        if (a < s)
            hi = mid;
        else
            lo = mid + 1;
    }
    Py_ssize_t i = lo - 1;
    *rank = ((const uint32_t *)r->ranks6.buf)[i];
    u128 max = ~(u128)0;
    u128 first = (u128)shi[i] << 64 | slo[i];
    u128 last = i + 1 < r->n6 ? ((u128)shi[i + 1] << 64 | slo[i + 1]) - 1 : max;
    *scope = scope_of(a, first, last, max, 128);
}

/* ---- the tables: negative answers -------------------------------------------------- */

/* 1 if bytes(name[from:len]) is in `container`, 0 if not, -1 on error. */
static int has_suffix(PyObject *container, const unsigned char *name, int from, int len) {
    PyObject *suffix = PyBytes_FromStringAndSize((const char *)name + from, len - from);
    if (suffix == NULL)
        return -1;
    int r = PySequence_Contains(container, suffix);
    Py_DECREF(suffix);
    return r;
}

/* Mirrors gslb.dns.state.negative_entry: the cached NXDOMAIN/REFUSED for a name never asked before.
 * `name` is the lower-case wire name (terminating zero included, `len` bytes). Returns a new
 * reference, NULL with no error when there is none, NULL with an error set on failure. */
static PyObject *negative_entry(Ctx *c, const unsigned char *name, int len, PyObject *qtype) {
    int offsets[MAX_LABELS + 1];
    int count = 0, pos = 0;
    while (name[pos]) {
        if (count == MAX_LABELS)
            return NULL;
        offsets[count++] = pos;
        pos += name[pos] + 1;
    }
    offsets[count++] = pos;
    int depth = -1;
    PyObject *zone = NULL;
    for (int d = 0; d < count; d++) {
        PyObject *suffix = PyBytes_FromStringAndSize((const char *)name + offsets[d], len - offsets[d]);
        if (suffix == NULL)
            return NULL;
        zone = PyDict_GetItemWithError(c->index, suffix);
        Py_DECREF(suffix);
        if (zone != NULL) {
            depth = d;
            break;
        }
        if (PyErr_Occurred())
            return NULL;
    }
    if (depth < 0) {
        PyObject *entry = PyDict_GetItemWithError(c->refused, qtype);
        Py_XINCREF(entry);
        return entry;
    }
    Py_INCREF(zone);
    PyObject *names = NULL, *cuts = NULL, *wild = NULL, *result = NULL;
    if (!(names = PyObject_GetAttr(zone, s_names)) || !(cuts = PyObject_GetAttr(zone, s_cuts)) ||
        !(wild = PyObject_GetAttr(zone, s_wildcard_parents)))
        goto done;
    for (int j = depth - 1; j >= 0; j--) {
        int r = has_suffix(cuts, name, offsets[j], len);
        if (r != 0)
            goto done; /* a referral (or an error) */
        r = has_suffix(names, name, offsets[j], len);
        if (r < 0)
            goto done;
        if (!r) {
            r = has_suffix(wild, name, offsets[j + 1], len);
            if (r != 0)
                goto done; /* synthesized from a wildcard */
            PyObject *origin = PyObject_GetAttr(zone, s_origin);
            if (origin == NULL)
                goto done;
            PyObject *key = Py_BuildValue("(NiO)", origin, len, qtype);
            if (key == NULL)
                goto done;
            result = PyDict_GetItemWithError(c->negative, key);
            Py_XINCREF(result);
            Py_DECREF(key);
            goto done;
        }
    }
done:
    Py_XDECREF(names);
    Py_XDECREF(cuts);
    Py_XDECREF(wild);
    Py_DECREF(zone);
    return result;
}

/* ---- reply assembly ----------------------------------------------------------------- */

static const char *bytes_attr(PyObject *obj, PyObject *name, Py_ssize_t size, Py_ssize_t *len) {
    PyObject *value = PyObject_GetAttr(obj, name);
    if (value == NULL)
        return NULL;
    Py_DECREF(value); /* the entry keeps it */
    if (!PyBytes_Check(value) || (size >= 0 && PyBytes_GET_SIZE(value) != size)) {
        PyErr_SetString(PyExc_TypeError, "unexpected Entry");
        return NULL;
    }
    if (len != NULL)
        *len = PyBytes_GET_SIZE(value);
    return PyBytes_AS_STRING(value);
}

/* The entry's Info from the batch's cache, read now if it is not there; NULL with an error set
 * if the entry is not what is expected. */
static Info *entry_info(Ctx *c, PyObject *entry) {
    Info *info = &c->infos[((uintptr_t)entry >> 4) % INFO_CACHE];
    if (info->entry == entry)
        return info;
    info_release(info);
    PyObject *flag_bytes = PyObject_GetAttr(entry, s_flag_bytes);
    if (flag_bytes == NULL)
        return NULL;
    int ok = PyTuple_Check(flag_bytes) && PyTuple_GET_SIZE(flag_bytes) == 4;
    for (int k = 0; ok && k < 4; k++) {
        PyObject *item = PyTuple_GET_ITEM(flag_bytes, k);
        ok = PyBytes_Check(item) && PyBytes_GET_SIZE(item) == 2;
        if (ok)
            info->flags[k] = PyBytes_AS_STRING(item);
    }
    Py_DECREF(flag_bytes); /* the entry keeps the tuple and its items */
    if (!ok) {
        PyErr_SetString(PyExc_TypeError, "unexpected Entry");
        return NULL;
    }
    if (!(info->head = bytes_attr(entry, s_head, 8, NULL)) || !(info->head_opt = bytes_attr(entry, s_head_opt, 8, NULL)) ||
        !(info->body = bytes_attr(entry, s_body, -1, &info->body_len)))
        return NULL;
    PyObject *scoped = PyObject_GetAttr(entry, s_scoped);
    if (scoped == NULL)
        return NULL;
    info->scoped = PyObject_IsTrue(scoped);
    Py_DECREF(scoped);
    if (info->scoped < 0)
        return NULL;
    /* DNSSEC: an Entry without these (of an older shape) is unsigned. */
    PyObject *dnssec = PyObject_GetAttr(entry, s_dnssec);
    info->signed_zone = dnssec != NULL ? PyObject_IsTrue(dnssec) : 0;
    Py_XDECREF(dnssec);
    if (info->signed_zone < 0)
        return NULL;
    PyErr_Clear();
    if (!(info->udp_key = PyObject_GetAttr(entry, s_udp_key)) ||
        !(info->answer_key = PyObject_GetAttr(entry, s_answer_key)) ||
        (info->signed_zone && !(info->signed_entry = PyObject_GetAttr(entry, s_signed)))) {
        info_release(info);
        return NULL;
    }
    Py_INCREF(entry);
    info->entry = entry;
    return info;
}

/* The reply a query with DO gets (Entry.dnssec, Entry.signed): 0 the entry itself (an unsigned zone),
 * 1 its signed variant in *variant (borrowed: the entry holds it), 2 none yet (Python signs it),
 * -1 with an error set. From the batch's Info when it has the entry, else two attributes (a
 * per-name denial is seen once a batch: its unsigned parts are never read for DO). */
static int signed_variant(Ctx *c, PyObject *entry, PyObject **variant) {
    Info *info = &c->infos[((uintptr_t)entry >> 4) % INFO_CACHE];
    if (info->entry == entry) {
        if (!info->signed_zone)
            return 0;
        *variant = info->signed_entry;
    } else {
        PyObject *flag = PyObject_GetAttr(entry, s_dnssec);
        if (flag == NULL) {
            PyErr_Clear(); /* an Entry of an older shape: unsigned */
            return 0;
        }
        int on = PyObject_IsTrue(flag);
        Py_DECREF(flag);
        if (on <= 0)
            return on;
        if (!(*variant = PyObject_GetAttr(entry, s_signed)))
            return -1;
        Py_DECREF(*variant); /* the entry keeps it */
    }
    return (PyObject *)Py_TYPE(*variant) == EntryType ? 1 : 2;
}

static int bump(PyObject *dict, PyObject *key) {
    PyObject *old = PyDict_GetItemWithError(dict, key);
    if (old == NULL && PyErr_Occurred())
        return -1;
    long long value = 1;
    if (old != NULL) {
        value = PyLong_AsLongLong(old) + 1;
        if (value == 0 && PyErr_Occurred())
            return -1;
    }
    PyObject *v = PyLong_FromLongLong(value);
    if (v == NULL)
        return -1;
    int r = PyDict_SetItem(dict, key, v);
    Py_DECREF(v);
    return r;
}

static int ecs_valid(const unsigned char *e, int len) {
    /* gslb.dns.answer._ecs_valid: RFC 7871 §7.1.1 */
    if (len < 4 || e[0] || (e[1] != 1 && e[1] != 2) || e[3])
        return 0;
    int source = e[2];
    if (source > (e[1] == 1 ? 32 : 128) || len - 4 != (source + 7) / 8)
        return 0;
    return !(source % 8 && e[len - 1] & (0xFF >> (source % 8)));
}

static PyObject *peer_host(const struct sockaddr_storage *sa, socklen_t len);

/* gslb.dns.cookies.length_ok: a client cookie alone (8), or with a server cookie of 8 to 32 bytes. */
static int cookie_length_ok(Py_ssize_t len) { return len == 8 || (len >= 16 && len <= 40); }

/* SipHash-2-4 (Aumasson and Bernstein), as gslb.dns.cookies.siphash24: 8 bytes, little-endian. */
static uint64_t le64(const unsigned char *p) {
    uint64_t x = 0;
    for (int i = 7; i >= 0; i--)
        x = x << 8 | p[i];
    return x;
}

#define ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))
#define SIPROUND                                                                                                  \
    do {                                                                                                          \
        v0 += v1; v1 = ROTL(v1, 13); v1 ^= v0; v0 = ROTL(v0, 32);                                                 \
        v2 += v3; v3 = ROTL(v3, 16); v3 ^= v2;                                                                    \
        v0 += v3; v3 = ROTL(v3, 21); v3 ^= v0;                                                                    \
        v2 += v1; v1 = ROTL(v1, 17); v1 ^= v2; v2 = ROTL(v2, 32);                                                 \
    } while (0)

static void siphash24(const unsigned char *key, const unsigned char *m, size_t len, unsigned char out[8]) {
    uint64_t k0 = le64(key), k1 = le64(key + 8);
    uint64_t v0 = k0 ^ 0x736f6d6570736575ULL, v1 = k1 ^ 0x646f72616e646f6dULL;
    uint64_t v2 = k0 ^ 0x6c7967656e657261ULL, v3 = k1 ^ 0x7465646279746573ULL;
    size_t full = len & ~(size_t)7;
    for (size_t i = 0; i < full; i += 8) {
        uint64_t mi = le64(m + i);
        v3 ^= mi;
        SIPROUND;
        SIPROUND;
        v0 ^= mi;
    }
    uint64_t last = (uint64_t)(len & 0xFF) << 56; /* the leftover bytes, the length's low byte on top */
    for (size_t i = 0; i < (len & 7); i++)
        last |= (uint64_t)m[full + i] << (8 * i);
    v3 ^= last;
    SIPROUND;
    SIPROUND;
    v0 ^= last;
    v2 ^= 0xFF;
    for (int r = 0; r < 4; r++)
        SIPROUND;
    uint64_t h = v0 ^ v1 ^ v2 ^ v3;
    for (int i = 0; i < 8; i++)
        out[i] = (unsigned char)(h >> (8 * i));
}

/* gslb.dns.cookies.Cookies._work_out in C: the (reply option, valid, until) for a cookie not remembered,
 * a new reference; NULL with no error set if C cannot (no address, secrets or constants: Python). */
static PyObject *cookie_work_out(Ctx *c, const Source *src, const unsigned char *data, Py_ssize_t len) {
    if (!ck_ok || c->nsecrets == 0 || (src->family != 4 && src->family != 6))
        return NULL;
    long long now = c->cookie_now, until = now + ck_remember;
    size_t alen = src->family == 4 ? 4 : 16;
    unsigned char message[32], hash[8], option[28] = {0, 10, 0, 24};
    int valid = 0, echo = 0;
    if (len == 24 && data[8] == ck_version) {
        uint32_t stamp = (uint32_t)data[12] << 24 | (uint32_t)data[13] << 16 | (uint32_t)data[14] << 8 | data[15];
        uint32_t delta = (uint32_t)now - stamp; /* serial arithmetic (RFC 1982) */
        long long age = delta & 0x80000000u ? (long long)delta - 4294967296LL : (long long)delta;
        memcpy(message, data, 16); /* the reserved bytes hashed as sent (RFC 9018 §4.2) */
        memcpy(message + 16, src->addr, alen);
        int made_with = -1;
        for (int k = 0; k < c->nsecrets && made_with < 0; k++) {
            siphash24(c->secret[k], message, 16 + alen, hash);
            if (memcmp(hash, data + 16, 8) == 0)
                made_with = k;
        }
        if (made_with >= 0 && -ck_skew <= age && age <= ck_lifetime) {
            valid = 1;
            echo = made_with == 0 && age < ck_echo;
            long long ends = echo ? now + ck_echo - age : now + ck_lifetime - age + 1;
            until = ends < until ? ends : until;
        } else if (made_with >= 0 && age < -ck_skew && now - ck_skew - age < until) {
            until = now - ck_skew - age; /* from an instance whose clock runs ahead */
        }
    }
    if (echo) {
        memcpy(option + 4, data, 24);
    } else { /* a fresh server cookie: version, reserved, timestamp, hash */
        memcpy(option + 4, data, 8);
        unsigned char *head = option + 12;
        head[0] = (unsigned char)ck_version;
        head[1] = head[2] = head[3] = 0;
        for (int i = 0; i < 4; i++)
            head[4 + i] = (unsigned char)((uint32_t)now >> (24 - 8 * i));
        memcpy(message, option + 4, 16);
        memcpy(message + 16, src->addr, alen);
        siphash24(c->secret[0], message, 16 + alen, option + 20);
    }
    return Py_BuildValue("(y#OL)", (const char *)option, (Py_ssize_t)sizeof(option), valid ? Py_True : Py_False,
                         until);
}

/* Our COOKIE option for (source, COOKIE option data), as gslb.dns.cookies.Cookies.answer gives it:
 * what the cache remembers while it holds, else worked out here and remembered for Python too.
 * 1 with a new reference to the (reply option, valid, until) tuple in *found, its option bytes
 * in *option / *option_len and the flag in *valid; 0 for anything unexpected (Python answers);
 * -1 with an error set. */
static int cookie_cached(Ctx *c, Source *src, const unsigned char *data, Py_ssize_t len, PyObject **found,
                         const char **option, Py_ssize_t *option_len, int *valid) {
    if (c->cookie_cache == NULL || !cookie_length_ok(len))
        return 0;
    if (src->host == NULL && src->sa != NULL && !(src->host = peer_host(src->sa, src->sa_len)))
        return -1;
    if (src->host == NULL || !PyUnicode_CheckExact(src->host))
        return 0;
    if (!c->cookie_now_read) { /* once a batch, as Python reads it: int(clock()) */
        PyObject *clock = PyObject_GetAttr(CookiesModule, s_clock);
        PyObject *t = clock ? PyObject_CallNoArgs(clock) : NULL;
        PyObject *whole = t ? PyNumber_Long(t) : NULL;
        Py_XDECREF(clock);
        Py_XDECREF(t);
        if (whole == NULL)
            return -1;
        c->cookie_now = PyLong_AsLongLong(whole);
        Py_DECREF(whole);
        if (c->cookie_now == -1 && PyErr_Occurred())
            return -1;
        c->cookie_now_read = 1;
    }
    PyObject *bytes = PyBytes_FromStringAndSize((const char *)data, len);
    if (bytes == NULL)
        return -1;
    PyObject *key = PyTuple_Pack(2, src->host, bytes);
    Py_DECREF(bytes);
    if (key == NULL)
        return -1;
    PyObject *value = PyDict_GetItemWithError(c->cookie_cache, key); /* borrowed */
    if (value == NULL && PyErr_Occurred()) {
        Py_DECREF(key);
        return -1;
    }
    if (value != NULL) {
        if (!PyTuple_CheckExact(value) || PyTuple_GET_SIZE(value) != 3) {
            Py_DECREF(key);
            return 0;
        }
        PyObject *until = PyTuple_GET_ITEM(value, 2);
        int overflow = 0;
        long long u = PyLong_CheckExact(until) ? PyLong_AsLongLongAndOverflow(until, &overflow) : -1;
        if (overflow || (u == -1 && PyErr_Occurred())) {
            PyErr_Clear();
            Py_DECREF(key);
            return 0;
        }
        if (c->cookie_now >= u)
            value = NULL; /* it would change now: worked out again */
        else
            Py_INCREF(value);
    }
    if (value == NULL) {
        value = cookie_work_out(c, src, data, len);
        if (value == NULL) {
            Py_DECREF(key);
            return PyErr_Occurred() ? -1 : 0;
        }
        if (PyDict_GET_SIZE(c->cookie_cache) >= ck_limit)
            PyDict_Clear(c->cookie_cache);
        if (PyDict_SetItem(c->cookie_cache, key, value) < 0) {
            Py_DECREF(value);
            Py_DECREF(key);
            return -1;
        }
    }
    Py_DECREF(key);
    PyObject *opt = PyTuple_GET_ITEM(value, 0), *flag = PyTuple_GET_ITEM(value, 1);
    if (!PyBytes_CheckExact(opt) || PyBytes_GET_SIZE(opt) < 4 || !PyBool_Check(flag)) {
        Py_DECREF(value);
        return 0;
    }
    *found = value;
    *option = PyBytes_AS_STRING(opt);
    *option_len = PyBytes_GET_SIZE(opt);
    *valid = flag == Py_True;
    return 1;
}

/* The answer to one query from the tables: 1 with the reply in out[0..*out_len), 0 to hand it
 * to Python, -1 with a Python error set (also handed to Python, after the caller clears it). */
static int answer_one(Ctx *c, const unsigned char *w, Py_ssize_t n, Source *src, unsigned char *out,
                      Py_ssize_t *out_len) {
    if (c->disabled)
        return 0;
    /* QR clear, opcode QUERY, one question, no answer or authority records. */
    if (n < 17 || w[2] & 0xF8 || memcmp(w + 4, "\x00\x01\x00\x00\x00\x00", 6) != 0 || w[10])
        return 0;
    Py_ssize_t i = 12;
    for (;;) {
        unsigned length = w[i];
        if (length == 0)
            break;
        if (length > 63)
            return 0;
        i += length + 1;
        if (i >= n)
            return 0;
    }
    Py_ssize_t name_len = i - 11; /* with the terminating zero */
    if (name_len > 255)
        return 0;
    Py_ssize_t qend = i + 5;
    if (qend > n || w[qend - 2] != 0 || w[qend - 1] != 1)
        return 0;
    /* OPT: exactly one, root owner, type 41, version 0, filling the rest; options walked. */
    int arcount = w[11], has_opt = 0, dnssec = 0;
    Py_ssize_t limit = 512, ecs = -1, ecs_len = 0, cookie = -1, cookie_len = 0;
    if (arcount == 0) {
        if (qend != n)
            return 0;
    } else {
        if (arcount != 1 || n < qend + 11 || w[qend] != 0 || w[qend + 1] != 0 || w[qend + 2] != 0x29 ||
            w[qend + 6])
            return 0;
        Py_ssize_t rdlen = w[qend + 9] << 8 | w[qend + 10];
        if (qend + 11 + rdlen != n)
            return 0;
        Py_ssize_t payload = w[qend + 3] << 8 | w[qend + 4];
        limit = payload < 512 ? 512 : payload > 1232 ? 1232 : payload;
        dnssec = w[qend + 7] & 0x80;
        has_opt = 1;
        for (Py_ssize_t pos = qend + 11; pos < n;) {
            if (pos + 4 > n)
                return 0;
            Py_ssize_t code = w[pos] << 8 | w[pos + 1], olen = w[pos + 2] << 8 | w[pos + 3];
            if (pos + 4 + olen > n)
                return 0;
            if (code == 10 && c->cookies) {
                if (cookie >= 0 || !cookie_length_ok(olen))
                    return 0; /* two, or a length no cookie has: FORMERR from Python */
                cookie = pos + 4;
                cookie_len = olen;
            }
            if (code == 8) {
                if (ecs >= 0)
                    return 0;
                ecs = pos + 4;
                ecs_len = olen;
            }
            pos += 4 + olen;
        }
        if (ecs >= 0 && !ecs_valid(w + ecs, (int)ecs_len))
            return 0;
    }
    /* The question key: lower-case name (ASCII letters only), QTYPE, QCLASS. */
    PyObject *key = PyBytes_FromStringAndSize(NULL, name_len + 4);
    if (key == NULL)
        return -1;
    unsigned char *k = (unsigned char *)PyBytes_AS_STRING(key);
    for (Py_ssize_t j = 0; j < name_len + 4; j++) {
        unsigned char b = w[12 + j];
        k[j] = (j < name_len && b >= 'A' && b <= 'Z') ? b + 32 : b;
    }
    int rc = 0, scope = 0;
    PyObject *entry = PyDict_GetItemWithError(c->statics, key); /* borrowed */
    PyObject *held = NULL;  /* a reference we own to the entry used */
    PyObject *cached = NULL; /* the cookie cache's value used, while its bytes are copied */
    if (entry == NULL) {
        if (PyErr_Occurred())
            goto error;
        if (c->index == NULL || c->negative == NULL || c->refused == NULL)
            goto done;
        PyObject *qtype = PyBytes_FromStringAndSize((const char *)k + name_len, 2);
        if (qtype == NULL)
            goto error;
        held = negative_entry(c, k, (int)name_len, qtype);
        Py_DECREF(qtype);
        if (held == NULL) {
            if (PyErr_Occurred())
                goto error;
            goto done; /* not a known negative: Python */
        }
    } else if ((PyObject *)Py_TYPE(entry) == SteeredType) {
        if (c->picks == NULL)
            goto done;
        PyObject *table = PyObject_GetAttr(entry, s_ranks);
        if (table == NULL)
            goto error;
        Ranks *r = ctx_ranks(c, table);
        Py_DECREF(table);
        if (r == NULL)
            goto done;
        long rank = r->default_rank;
        if (ecs >= 0) {
            const unsigned char *e = w + ecs;
            if (e[2] != 0) {
                unsigned char addr[16] = {0};
                memcpy(addr, e + 4, (size_t)ecs_len - 4);
                if (e[1] == 1)
                    locate4(r, (uint32_t)addr[0] << 24 | (uint32_t)addr[1] << 16 | (uint32_t)addr[2] << 8 | addr[3],
                            &rank, &scope);
                else
                    locate6(r, addr, &rank, &scope);
            }
        } else if (c->by_resolver) {
            if (src->family == 4)
                locate4(r, (uint32_t)src->addr[0] << 24 | (uint32_t)src->addr[1] << 16 |
                               (uint32_t)src->addr[2] << 8 | src->addr[3], &rank, &scope);
            else if (src->family == 6)
                locate6(r, src->addr, &rank, &scope);
            else
                goto done;
        }
        PyObject *pick_key = Py_BuildValue("(Ol)", key, rank);
        if (pick_key == NULL)
            goto error;
        held = PyDict_GetItemWithError(c->picks, pick_key);
        Py_DECREF(pick_key);
        if (held == NULL) {
            if (PyErr_Occurred())
                goto error;
            goto done; /* not picked yet for this ranking: Python picks and caches it */
        }
        Py_INCREF(held);
    } else {
        held = entry;
        Py_INCREF(held);
    }
    if ((PyObject *)Py_TYPE(held) != EntryType)
        goto done; /* UNCACHED, or anything else: Python */
    if (dnssec) { /* RFC 4035 §3.1.1: the signed variant, only when the query sets DO */
        PyObject *variant = NULL;
        int r = signed_variant(c, held, &variant);
        if (r < 0)
            goto error;
        if (r == 2)
            goto done; /* None yet: its proof is signed for the name asked, by Python */
        if (r == 1) {
            Py_INCREF(variant);
            Py_DECREF(held);
            held = variant;
        }
    }
    Info *p = entry_info(c, held);
    if (p == NULL)
        goto error;
    /* Our COOKIE option, from what Python remembers for this client and option (RFC 7873 §5.2). */
    const char *answer_cookie = NULL;
    Py_ssize_t answer_cookie_len = 0;
    int valid = 0;
    if (cookie >= 0) {
        int r = cookie_cached(c, src, w + cookie, cookie_len, &cached, &answer_cookie, &answer_cookie_len, &valid);
        if (r < 0)
            goto error;
        if (r == 0)
            goto done; /* unexpected: Python answers */
    }
    int reply_scope = p->scoped ? scope : 0;
    Py_ssize_t qlen = qend - 12;
    Py_ssize_t opt_len = !has_opt ? 0 : OPT_HEAD + (ecs < 0 ? 0 : 4 + ecs_len) + answer_cookie_len;
    Py_ssize_t total = 12 + qlen + p->body_len + opt_len;
    if (total > limit || total > REPLY_MAX || (c->tc_size > 0 && !valid && total > c->tc_size))
        goto done; /* Python sends it with TC */
    unsigned char *o = out;
    memcpy(o, w, 2);
    memcpy(o + 2, p->flags[(w[2] & 0x01) | (w[3] & 0x10) >> 3], 2);
    memcpy(o + 4, has_opt ? p->head_opt : p->head, 8);
    memcpy(o + 12, w + 12, (size_t)qlen);
    o += 12 + qlen;
    memcpy(o, p->body, (size_t)p->body_len);
    o += p->body_len;
    if (has_opt) {
        static const unsigned char opt_head[7] = {0, 0, 0x29, 0x04, 0xd0, 0, 0};
        memcpy(o, opt_head, 7);
        o[7] = dnssec ? 0x80 : 0;
        o[8] = 0;
        Py_ssize_t rdlen = opt_len - OPT_HEAD;
        o[9] = (unsigned char)(rdlen >> 8);
        o[10] = (unsigned char)rdlen;
        o += OPT_HEAD;
        if (ecs >= 0) { /* ECS first, then COOKIE, as Python orders them */
            o[0] = 0;
            o[1] = 8;
            o[2] = (unsigned char)(ecs_len >> 8);
            o[3] = (unsigned char)ecs_len;
            memcpy(o + 4, w + ecs, 3);
            o[7] = (unsigned char)reply_scope;
            memcpy(o + 8, w + ecs + 4, (size_t)ecs_len - 4);
            o += 4 + ecs_len;
        }
        if (answer_cookie_len) {
            memcpy(o, answer_cookie, (size_t)answer_cookie_len);
            o += answer_cookie_len;
        }
    }
    *out_len = o - out;
    if (bump(c->by_key, p->udp_key) < 0 || (p->answer_key != Py_None && bump(c->by_answer, p->answer_key) < 0))
        goto error;
    c->ticks++;
    c->ticks_dirty = 1;
    rc = 1;
    goto done;
error:
    rc = -1;
done:
    Py_XDECREF(cached);
    Py_XDECREF(held);
    Py_DECREF(key);
    return rc;
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* answer_one with the latency sample of Answerer.handle (one query in SAMPLE_MASK + 1). */
static int answer_timed(Ctx *c, const unsigned char *w, Py_ssize_t n, Source *src, unsigned char *out,
                        Py_ssize_t *out_len) {
    int sample = !c->disabled && !((c->ticks + 1) & SAMPLE_MASK);
    double started = sample ? now() : 0;
    int rc = answer_one(c, w, n, src, out, out_len);
    if (rc < 0) {
        PyErr_Clear(); /* Python answers it, and logs what is wrong */
        return 0;
    }
    if (rc == 1 && sample) {
        if (ctx_flush_ticks(c) < 0)
            PyErr_Clear();
        PyObject *seconds = PyFloat_FromDouble(now() - started);
        PyObject *r = seconds ? PyObject_CallMethodObjArgs(c->counters, s_observe, seconds, NULL) : NULL;
        Py_XDECREF(seconds);
        Py_XDECREF(r);
        if (r == NULL)
            PyErr_Clear();
        /* other threads may have run */
        if (ctx_read_ticks(c) < 0) {
            PyErr_Clear();
            c->disabled = 1;
        }
    }
    return rc;
}

static int parse_source(PyObject *source, Source *src) {
    src->family = 0;
    src->host = NULL;
    src->sa = NULL;
    if (source == Py_None)
        return 0;
    if (!PyUnicode_Check(source)) {
        PyErr_SetString(PyExc_TypeError, "source must be an address string or None");
        return -1;
    }
    const char *text = PyUnicode_AsUTF8(source);
    if (text == NULL)
        return -1;
    char buf[INET6_ADDRSTRLEN + 1];
    size_t len = strcspn(text, "%");
    if (len < sizeof(buf)) {
        memcpy(buf, text, len);
        buf[len] = 0;
        if (inet_pton(AF_INET, buf, src->addr) == 1)
            src->family = 4;
        else if (inet_pton(AF_INET6, buf, src->addr) == 1)
            src->family = 6;
    }
    Py_INCREF(source);
    src->host = source; /* the cookie cache's key, as the caller gives it */
    return 0;
}

static PyObject *fastudp_answer(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "answer(answerer, wire, source)");
        return NULL;
    }
    if (!PyBytes_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "wire must be bytes");
        return NULL;
    }
    Source src;
    if (parse_source(args[2], &src) < 0)
        return NULL;
    Ctx c;
    ctx_open(&c, args[0]);
    unsigned char out[REPLY_MAX];
    Py_ssize_t out_len = 0, n = PyBytes_GET_SIZE(args[1]);
    const unsigned char *wire = (const unsigned char *)PyBytes_AS_STRING(args[1]);
#ifdef GSLB_FASTUDP_EXACT
    /* The sanitizer build: the packet in a heap block of exactly its size (a bytes object has
     * a spare NUL after its data), so reading one byte past it is reported. */
    unsigned char *exact = PyMem_RawMalloc(n ? (size_t)n : 1);
    if (exact == NULL) {
        Py_XDECREF(src.host);
        ctx_close(&c);
        return PyErr_NoMemory();
    }
    memcpy(exact, wire, (size_t)n);
    wire = exact;
#endif
    int rc = answer_timed(&c, wire, n, &src, out, &out_len);
#ifdef GSLB_FASTUDP_EXACT
    PyMem_RawFree(exact);
#endif
    Py_XDECREF(src.host);
    ctx_close(&c);
    if (rc != 1)
        Py_RETURN_NONE;
    return PyBytes_FromStringAndSize((const char *)out, out_len);
}

/* answer_batch(answerer, [(wire, source), ...]): what the loop does with one received batch,
 * without the sockets: one view of the tables for the whole list. */
static PyObject *fastudp_answer_batch(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2 || !PyList_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "answer_batch(answerer, [(wire, source), ...])");
        return NULL;
    }
    PyObject *items = args[1];
    Py_ssize_t count = PyList_GET_SIZE(items);
    PyObject *out = PyList_New(count);
    if (out == NULL)
        return NULL;
    Ctx c;
    ctx_open(&c, args[0]);
    unsigned char reply[REPLY_MAX];
    for (Py_ssize_t k = 0; k < count; k++) {
        PyObject *item = PyList_GET_ITEM(items, k), *wire, *source;
        Source src;
        if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 2 || !PyBytes_Check(wire = PyTuple_GET_ITEM(item, 0)) ||
            parse_source(source = PyTuple_GET_ITEM(item, 1), &src) < 0) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_TypeError, "items must be (bytes, str | None)");
            ctx_close(&c);
            Py_DECREF(out);
            return NULL;
        }
        Py_ssize_t len = 0;
        PyObject *result = Py_None;
        int rc = answer_timed(&c, (const unsigned char *)PyBytes_AS_STRING(wire), PyBytes_GET_SIZE(wire), &src, reply,
                              &len);
        Py_XDECREF(src.host);
        if (rc == 1) {
            result = PyBytes_FromStringAndSize((const char *)reply, len);
            if (result == NULL) {
                ctx_close(&c);
                Py_DECREF(out);
                return NULL;
            }
        } else {
            Py_INCREF(result);
        }
        PyList_SET_ITEM(out, k, result);
    }
    ctx_close(&c);
    return out;
}

/* ---- the loop ------------------------------------------------------------------------ */

typedef struct {
    PyObject_HEAD
    int fd;
    PyObject *answerer, *handle;
    volatile int stopping;
    int running;
    unsigned long long batches, datagrams, compiled; /* for tests and the curious */
} LoopObject;

static int Loop_init(LoopObject *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"fd", "answerer", "handle", NULL};
    int fd;
    PyObject *answerer, *handle;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "iOO", kwlist, &fd, &answerer, &handle))
        return -1;
    if (!PyCallable_Check(handle)) {
        PyErr_SetString(PyExc_TypeError, "handle must be callable");
        return -1;
    }
    self->fd = fd;
    Py_INCREF(answerer);
    Py_XSETREF(self->answerer, answerer);
    Py_INCREF(handle);
    Py_XSETREF(self->handle, handle);
    return 0;
}

static void Loop_dealloc(LoopObject *self) {
    Py_CLEAR(self->answerer);
    Py_CLEAR(self->handle);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* The peer's address as this Python's recvfrom gives it: before 3.12 through getnameinfo
 * (an IPv6 scope as "%lo"), from 3.12 through inet_ntop (the scope is not in the host). */
static PyObject *peer_host(const struct sockaddr_storage *sa, socklen_t len) {
    char host[NI_MAXHOST];
#if PY_VERSION_HEX < 0x030C0000
    if (sa->ss_family == AF_INET) { /* the same text without getnameinfo's cost (every COOKIE query needs it) */
        if (inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, host, sizeof(host)) == NULL)
            Py_RETURN_NONE;
    } else if (getnameinfo((const struct sockaddr *)sa, len, host, sizeof(host), NULL, 0, NI_NUMERICHOST) != 0) {
        Py_RETURN_NONE;
    }
#else
    const void *addr = sa->ss_family == AF_INET ? (const void *)&((const struct sockaddr_in *)sa)->sin_addr
                                                : (const void *)&((const struct sockaddr_in6 *)sa)->sin6_addr;
    if (inet_ntop(sa->ss_family, addr, host, sizeof(host)) == NULL)
        Py_RETURN_NONE;
#endif
    return PyUnicode_FromString(host);
}

static void source_of(const struct sockaddr_storage *sa, socklen_t len, Source *src) {
    src->family = 0;
    src->host = NULL;
    src->sa = sa;
    src->sa_len = len;
    if (sa->ss_family == AF_INET) {
        memcpy(src->addr, &((const struct sockaddr_in *)sa)->sin_addr, 4);
        src->family = 4;
    } else if (sa->ss_family == AF_INET6) {
        memcpy(src->addr, &((const struct sockaddr_in6 *)sa)->sin6_addr, 16);
        src->family = 6;
    }
}

typedef struct {
    struct mmsghdr in[BATCH], out[BATCH];
    struct iovec in_iov[BATCH], out_iov[BATCH];
    struct sockaddr_storage names[BATCH];
    unsigned char bufs[BATCH][RECV_SIZE];
    unsigned char replies[BATCH][REPLY_MAX];
    PyObject *held[BATCH]; /* replies from Python, alive until sent */
} Buffers;

static void send_all(int fd, struct mmsghdr *msgs, int count) {
    int done = 0;
    while (done < count) {
        int r = sendmmsg(fd, msgs + done, (unsigned)(count - done), 0);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            done++; /* that client's problem (ICMP errors, buffers): skip its reply */
        } else {
            done += r > 0 ? r : 1;
        }
    }
}

static PyObject *Loop_run(LoopObject *self, PyObject *Py_UNUSED(ignored)) {
    if (self->running) {
        PyErr_SetString(PyExc_RuntimeError, "the loop is already running");
        return NULL;
    }
    Buffers *b = PyMem_RawCalloc(1, sizeof(Buffers));
    if (b == NULL)
        return PyErr_NoMemory();
    self->running = 1;
    PyObject *result = Py_None;
    /* A blocking receive that gives up now and then, so that stop() is noticed: gslb's sockets
     * come with one (server.udp_socket); give any other socket one too. */
    struct timeval wake;
    socklen_t wake_len = sizeof(wake);
    if (getsockopt(self->fd, SOL_SOCKET, SO_RCVTIMEO, &wake, &wake_len) == 0 && wake.tv_sec == 0 &&
        wake.tv_usec == 0) {
        wake.tv_usec = (suseconds_t)(WAKE_SECONDS * 1e6);
        setsockopt(self->fd, SOL_SOCKET, SO_RCVTIMEO, &wake, sizeof(wake));
    }
    while (!self->stopping) {
        for (int k = 0; k < BATCH; k++) {
            b->in_iov[k].iov_base = b->bufs[k];
            b->in_iov[k].iov_len = RECV_SIZE;
            memset(&b->in[k].msg_hdr, 0, sizeof(struct msghdr));
            b->in[k].msg_hdr.msg_name = &b->names[k];
            b->in[k].msg_hdr.msg_namelen = sizeof(b->names[k]);
            b->in[k].msg_hdr.msg_iov = &b->in_iov[k];
            b->in[k].msg_hdr.msg_iovlen = 1;
        }
        int got, err;
        double started = now();
        Py_BEGIN_ALLOW_THREADS
        got = recvmmsg(self->fd, b->in, BATCH, MSG_WAITFORONE, NULL);
        err = errno;
        if (got < 0 && (err == EAGAIN || err == EWOULDBLOCK) && now() - started < WAKE_SECONDS / 10) {
            /* At once, not after the wake-up timeout: the socket is non-blocking (a flag its
             * other users share). Wait here instead of spinning. */
            struct pollfd pfd = {.fd = self->fd, .events = POLLIN};
            poll(&pfd, 1, (int)(WAKE_SECONDS * 1000));
        }
        Py_END_ALLOW_THREADS
        if (got < 0) {
            if (self->stopping)
                break;
            if (err == EBADF || err == ENOTSOCK || err == EINVAL || err == EFAULT) {
                errno = err;
                PyErr_SetFromErrno(PyExc_OSError);
                result = NULL;
                break;
            }
            continue; /* the wake-up timeout (EAGAIN), a signal, or a client's ICMP error */
        }
        self->batches++;
        Ctx c;
        ctx_open(&c, self->answerer);
        int nout = 0;
        for (int k = 0; k < got; k++) {
            Py_ssize_t n = b->in[k].msg_len;
            if (n == 0)
                continue;
            if (n > RECV_SIZE)
                n = RECV_SIZE;
            self->datagrams++;
            Source src;
            source_of(&b->names[k], b->in[k].msg_hdr.msg_namelen, &src);
            Py_ssize_t len = 0;
            const void *data;
            PyObject *reply = NULL;
            if (answer_timed(&c, b->bufs[k], n, &src, b->replies[k], &len) == 1) {
                Py_CLEAR(src.host);
                data = b->replies[k];
                self->compiled++;
            } else {
                if (!c.disabled && ctx_flush_ticks(&c) < 0)
                    PyErr_Clear();
                PyObject *wire = PyBytes_FromStringAndSize((const char *)b->bufs[k], n);
                PyObject *host = src.host; /* made for a COOKIE already, or now */
                src.host = NULL;
                if (host == NULL && wire != NULL)
                    host = peer_host(&b->names[k], b->in[k].msg_hdr.msg_namelen);
                if (host != NULL && wire != NULL)
                    reply = PyObject_CallFunctionObjArgs(self->handle, wire, host, Py_False, NULL);
                Py_XDECREF(wire);
                Py_XDECREF(host);
                if (!c.disabled && ctx_read_ticks(&c) < 0) {
                    PyErr_Clear();
                    c.disabled = 1;
                }
                if (reply == NULL) {
                    PyErr_WriteUnraisable(self->handle);
                    continue;
                }
                if (!PyBytes_Check(reply)) {
                    Py_DECREF(reply); /* None: nothing to send */
                    continue;
                }
                data = PyBytes_AS_STRING(reply);
                len = PyBytes_GET_SIZE(reply);
            }
            b->held[nout] = reply;
            b->out_iov[nout].iov_base = (void *)data;
            b->out_iov[nout].iov_len = (size_t)len;
            memset(&b->out[nout].msg_hdr, 0, sizeof(struct msghdr));
            b->out[nout].msg_hdr.msg_name = &b->names[k];
            b->out[nout].msg_hdr.msg_namelen = b->in[k].msg_hdr.msg_namelen;
            b->out[nout].msg_hdr.msg_iov = &b->out_iov[nout];
            b->out[nout].msg_hdr.msg_iovlen = 1;
            nout++;
        }
        ctx_close(&c);
        if (nout) {
            Py_BEGIN_ALLOW_THREADS
            send_all(self->fd, b->out, nout);
            Py_END_ALLOW_THREADS
        }
        for (int k = 0; k < nout; k++)
            Py_CLEAR(b->held[k]);
    }
    self->running = 0;
    PyMem_RawFree(b);
    if (result == NULL)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *Loop_stop(LoopObject *self, PyObject *Py_UNUSED(ignored)) {
    self->stopping = 1;
    Py_RETURN_NONE;
}

static PyObject *Loop_stats(LoopObject *self, PyObject *Py_UNUSED(ignored)) {
    return Py_BuildValue("{sKsKsK}", "batches", self->batches, "datagrams", self->datagrams, "compiled",
                         self->compiled);
}

static PyMethodDef Loop_methods[] = {
    {"run", (PyCFunction)Loop_run, METH_NOARGS,
     "Receive, answer and send in batches until stop() (blocks; the GIL is released while waiting)."},
    {"stop", (PyCFunction)Loop_stop, METH_NOARGS, "Have run() return once the batch in hand is sent."},
    {"stats", (PyCFunction)Loop_stats, METH_NOARGS, "Batches, datagrams, and datagrams answered here."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject LoopType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "gslb.dns._fastudp.Loop",
    .tp_basicsize = sizeof(LoopObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Loop(fd, answerer, handle): the batched UDP receive loop on a bound socket's descriptor.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Loop_init,
    .tp_dealloc = (destructor)Loop_dealloc,
    .tp_methods = Loop_methods,
};

static PyObject *fastudp_siphash24(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2 || !PyBytes_Check(args[0]) || PyBytes_GET_SIZE(args[0]) != 16 || !PyBytes_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "siphash24(key: 16 bytes, message: bytes)");
        return NULL;
    }
    unsigned char out[8];
    siphash24((const unsigned char *)PyBytes_AS_STRING(args[0]), (const unsigned char *)PyBytes_AS_STRING(args[1]),
              (size_t)PyBytes_GET_SIZE(args[1]), out);
    return PyBytes_FromStringAndSize((const char *)out, 8);
}

static PyMethodDef module_methods[] = {
    {"siphash24", (PyCFunction)(void (*)(void))fastudp_siphash24, METH_FASTCALL,
     "siphash24(key, message) -> bytes: SipHash-2-4 as the loop computes server cookies (gslb.dns.cookies.siphash24)."},
    {"answer", (PyCFunction)(void (*)(void))fastudp_answer, METH_FASTCALL,
     "answer(answerer, wire, source) -> bytes | None: the reply the loop would send itself, counters "
     "bumped as Answerer.handle does; None: the loop hands this query to Python."},
    {"answer_batch", (PyCFunction)(void (*)(void))fastudp_answer_batch, METH_FASTCALL,
     "answer_batch(answerer, [(wire, source), ...]) -> [bytes | None, ...]: answer() over a list with one "
     "view of the tables, as the loop does for each received batch."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef fastudp_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "gslb.dns._fastudp",
    .m_doc = "The compiled UDP loop: recvmmsg/sendmmsg batches and the fast path over gslb.dns.answer's tables.",
    .m_size = -1,
    .m_methods = module_methods,
};

PyMODINIT_FUNC PyInit__fastudp(void) {
    if (intern_names() < 0 || PyType_Ready(&LoopType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&fastudp_module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&LoopType);
    if (PyModule_AddObject(m, "Loop", (PyObject *)&LoopType) < 0 || PyModule_AddIntConstant(m, "BATCH", BATCH) < 0 ||
        PyModule_AddStringConstant(m, "SOURCE", GSLB_FASTUDP_SOURCE) < 0) {
        Py_DECREF(&LoopType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
