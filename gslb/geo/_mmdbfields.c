/* The few fields gslb reads from MaxMind DB data records, decoded in C.
 *
 * gslb.geo.table decodes every distinct record of a database once, when it compiles the
 * database into blocks; a City database has about 450k of them, which the pure-Python
 * decoder takes 10-20 s over. This reads only what a location needs: country.iso_code,
 * continent.code, subdivisions[0].iso_code, location.latitude/longitude and the English (else
 * the first) name of the city, skipping the rest of each record without building it.
 *
 * The format is the MaxMind DB spec's data section (types, sizes, pointers). Every read is
 * bounds-checked: a corrupt record gives None for that record, never a read past the buffer.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

enum { T_EXTENDED = 0, T_POINTER = 1, T_STRING = 2, T_DOUBLE = 3, T_BYTES = 4, T_UINT16 = 5,
       T_UINT32 = 6, T_MAP = 7, T_INT32 = 8, T_UINT64 = 9, T_UINT128 = 10, T_ARRAY = 11,
       T_CONTAINER = 12, T_END = 13, T_BOOL = 14, T_FLOAT = 15 };

#define MAX_DEPTH 32

typedef struct {
    const unsigned char *buf;
    Py_ssize_t len;
    Py_ssize_t base; /* where the data section starts: pointers count from here */
} Data;

typedef struct {
    int type;
    Py_ssize_t size;  /* length, item count, or the value for booleans */
    Py_ssize_t start; /* where the payload starts */
} Head;

/* The control byte(s) at *pos, following at most one pointer; -1 on a malformed value. */
static int head_at(const Data *d, Py_ssize_t pos, Head *h, Py_ssize_t *after, int follow) {
    if (pos < 0 || pos >= d->len) return -1;
    unsigned char ctrl = d->buf[pos++];
    int type = ctrl >> 5;
    if (type == T_POINTER) {
        int ss = (ctrl >> 3) & 3;
        Py_ssize_t v = ctrl & 7, target;
        if (pos + ss + 1 > d->len) return -1;
        const unsigned char *b = d->buf + pos;
        if (ss == 0) target = (v << 8) | b[0];
        else if (ss == 1) target = ((v << 16) | (b[0] << 8) | b[1]) + 2048;
        else if (ss == 2) target = ((v << 24) | (b[0] << 16) | (b[1] << 8) | b[2]) + 526336;
        else target = ((Py_ssize_t)b[0] << 24) | (b[1] << 16) | (b[2] << 8) | b[3];
        pos += ss + 1;
        if (after) *after = pos;
        if (!follow) { h->type = T_POINTER; h->size = 0; h->start = pos; return 0; }
        /* The spec forbids a pointer to a pointer: follow one only. */
        return head_at(d, d->base + target, h, NULL, 0) < 0 || h->type == T_POINTER ? -1 : 0;
    }
    if (type == T_EXTENDED) {
        if (pos >= d->len) return -1;
        type = 7 + d->buf[pos++];
    }
    Py_ssize_t size = ctrl & 0x1f;
    if (size >= 29) {
        int extra = (int)size - 28;
        if (pos + extra > d->len) return -1;
        const unsigned char *b = d->buf + pos;
        if (size == 29) size = 29 + b[0];
        else if (size == 30) size = 285 + ((b[0] << 8) | b[1]);
        else size = 65821 + ((Py_ssize_t)b[0] << 16 | b[1] << 8 | b[2]);
        pos += extra;
    }
    h->type = type;
    h->size = size;
    h->start = pos;
    if (after) {
        Py_ssize_t end = pos;
        switch (type) {
        case T_MAP: case T_ARRAY: case T_BOOL: break; /* items follow, or nothing */
        case T_DOUBLE: end += 8; break;
        case T_FLOAT: end += 4; break;
        default: end += size;
        }
        if (end > d->len) return -1;
        *after = end;
    }
    return 0;
}

/* The position after the value at pos (a pointer counts as its own bytes); -1 if malformed. */
static Py_ssize_t skip(const Data *d, Py_ssize_t pos, int depth) {
    Head h;
    Py_ssize_t after;
    if (depth > MAX_DEPTH || head_at(d, pos, &h, &after, 0) < 0) return -1;
    if (h.type == T_MAP || h.type == T_ARRAY) {
        Py_ssize_t items = h.type == T_MAP ? 2 * h.size : h.size;
        pos = after;
        for (Py_ssize_t i = 0; i < items; i++) {
            pos = skip(d, pos, depth + 1);
            if (pos < 0) return -1;
        }
        return pos;
    }
    return after;
}

/* Is the (possibly pointed-to) string at pos equal to key? -1 if not a string or malformed. */
static int key_is(const Data *d, Py_ssize_t pos, const char *key, Py_ssize_t keylen) {
    Head h;
    if (head_at(d, pos, &h, NULL, 1) < 0 || h.type != T_STRING) return -1;
    if (h.start + h.size > d->len) return -1;
    return h.size == keylen && memcmp(d->buf + h.start, key, (size_t)keylen) == 0;
}

/* The value position of `key` in the map at pos (pointers followed), 0 if absent, -1 if malformed. */
static Py_ssize_t find(const Data *d, Py_ssize_t pos, const char *key) {
    Head h;
    if (pos <= 0) return pos;
    if (head_at(d, pos, &h, NULL, 1) < 0) return -1;
    if (h.type != T_MAP) return 0;
    Py_ssize_t keylen = (Py_ssize_t)strlen(key), at = h.start;
    for (Py_ssize_t i = 0; i < h.size; i++) {
        int same = key_is(d, at, key, keylen);
        if (same < 0) return -1;
        at = skip(d, at, 0);
        if (at < 0) return -1;
        if (same) return at;
        at = skip(d, at, 0);
        if (at < 0) return -1;
    }
    return 0;
}

/* The string at pos as a new str (None if absent or not a string); NULL only on a Python error. */
static PyObject *text_at(const Data *d, Py_ssize_t pos) {
    Head h;
    if (pos <= 0 || head_at(d, pos, &h, NULL, 1) < 0 || h.type != T_STRING || h.size == 0
        || h.start + h.size > d->len)
        Py_RETURN_NONE;
    return PyUnicode_DecodeUTF8((const char *)d->buf + h.start, h.size, "replace");
}

/* A number (double, float or integer) at pos into *out; 0 if there is none. */
static int number_at(const Data *d, Py_ssize_t pos, double *out) {
    Head h;
    if (pos <= 0 || head_at(d, pos, &h, NULL, 1) < 0) return 0;
    const unsigned char *b = d->buf + h.start;
    if ((h.type == T_UINT16 || h.type == T_UINT32 || h.type == T_UINT64 || h.type == T_INT32)
        && h.size <= 8 && h.start + h.size <= d->len) {
        unsigned long long v = 0;
        for (Py_ssize_t i = 0; i < h.size; i++) v = v << 8 | b[i];
        if (h.type == T_INT32) {
            *out = (double)(int)(unsigned int)v;  /* 32-bit two's complement */
        } else {
            *out = (double)v;
        }
        return 1;
    }
    if (h.type == T_DOUBLE && h.start + 8 <= d->len) {
        unsigned long long bits = 0;
        for (int i = 0; i < 8; i++) bits = bits << 8 | b[i];
        memcpy(out, &bits, 8);
        return 1;
    }
    if (h.type == T_FLOAT && h.start + 4 <= d->len) {
        unsigned int bits = 0;
        float f;
        for (int i = 0; i < 4; i++) bits = bits << 8 | b[i];
        memcpy(&f, &bits, 4);
        *out = f;
        return 1;
    }
    return 0;
}

/* The city's English name, else its first non-empty name (as gslb.geo.database does). */
static PyObject *city_name(const Data *d, Py_ssize_t city) {
    Py_ssize_t names = find(d, city, "names");
    Head h;
    if (names <= 0 || head_at(d, names, &h, NULL, 1) < 0 || h.type != T_MAP) Py_RETURN_NONE;
    Py_ssize_t en = find(d, names, "en");
    if (en > 0) {
        PyObject *name = text_at(d, en);
        if (name != Py_None) return name;
        Py_DECREF(name);
    }
    Py_ssize_t at = h.start;
    for (Py_ssize_t i = 0; i < h.size; i++) {
        at = skip(d, at, 0);
        if (at < 0) break;
        PyObject *name = text_at(d, at);
        if (name == NULL || name != Py_None) return name;
        Py_DECREF(name);
        at = skip(d, at, 0);
        if (at < 0) break;
    }
    Py_RETURN_NONE;
}

/* (country, continent, subdivision, latitude, longitude, city) of the record at pos, as found
 * (no centroid filling: gslb.geo.database does that); None when the record is not a map or is corrupt. */
static PyObject *record(const Data *d, Py_ssize_t pos) {
    Head h;
    if (head_at(d, pos, &h, NULL, 1) < 0 || h.type != T_MAP) Py_RETURN_NONE;
    Py_ssize_t country = find(d, pos, "country");
    Py_ssize_t continent = find(d, pos, "continent");
    Py_ssize_t location = find(d, pos, "location");
    Py_ssize_t subdivisions = find(d, pos, "subdivisions");
    Py_ssize_t city = find(d, pos, "city");
    if (country < 0 || continent < 0 || location < 0 || subdivisions < 0 || city < 0) Py_RETURN_NONE;
    Py_ssize_t first = 0;
    if (subdivisions > 0 && head_at(d, subdivisions, &h, NULL, 1) == 0 && h.type == T_ARRAY && h.size > 0)
        first = h.start;
    double lat = 0, lon = 0;
    int has_lat = number_at(d, find(d, location, "latitude"), &lat);
    int has_lon = number_at(d, find(d, location, "longitude"), &lon);
    PyObject *items[6];
    items[0] = text_at(d, find(d, country, "iso_code"));
    items[1] = text_at(d, find(d, continent, "code"));
    items[2] = text_at(d, find(d, first, "iso_code"));
    if (has_lat && has_lon) {
        items[3] = PyFloat_FromDouble(lat);
        items[4] = PyFloat_FromDouble(lon);
    } else {
        items[3] = Py_NewRef(Py_None);
        items[4] = Py_NewRef(Py_None);
    }
    items[5] = city_name(d, city);
    PyObject *out = NULL;
    int ok = 1;
    for (int i = 0; i < 6; i++) ok &= items[i] != NULL;
    if (ok) out = PyTuple_Pack(6, items[0], items[1], items[2], items[3], items[4], items[5]);
    for (int i = 0; i < 6; i++) Py_XDECREF(items[i]);
    return out;
}

static PyObject *fields(PyObject *self, PyObject *args) {
    Py_buffer buffer, positions;
    Py_ssize_t base;
    if (!PyArg_ParseTuple(args, "y*ny*", &buffer, &base, &positions)) return NULL;
    PyObject *out = NULL;
    if (positions.itemsize != 8 || positions.len % 8) {
        PyErr_SetString(PyExc_ValueError, "positions must be a contiguous int64 buffer");
        goto done;
    }
    Data d = {(const unsigned char *)buffer.buf, buffer.len, base};
    Py_ssize_t n = positions.len / 8;
    const long long *at = (const long long *)positions.buf;
    out = PyList_New(n);
    if (out == NULL) goto done;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = record(&d, (Py_ssize_t)at[i]);
        if (item == NULL) { Py_CLEAR(out); goto done; }
        PyList_SET_ITEM(out, i, item);
    }
done:
    PyBuffer_Release(&buffer);
    PyBuffer_Release(&positions);
    return out;
}

static PyMethodDef methods[] = {
    {"fields", fields, METH_VARARGS,
     "fields(database: bytes, data_start: int, positions: int64 buffer) -> list of "
     "(country, continent, subdivision, latitude, longitude, city) or None per record"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_mmdbfields",
                                    "MaxMind DB record fields gslb reads, decoded in C.", -1, methods};

PyMODINIT_FUNC PyInit__mmdbfields(void) { return PyModule_Create(&module); }
