// SPDX-License-Identifier: Apache-2.0
// Finds or embeds a Python interpreter for the TEC GDAL driver; see tec_python.h.
//
// Algorithm (runs once, at the first pixel access; Identify/Open never get here):
//  1. Read gdal_TEC.json next to this plugin (written by `make install`):
//       {"python": "<venv>/bin/python", "python_version": "3.11",
//        "libpython": "/.../libpython3.11.so.1.0", "pythonpath": ["<repo>", ...],
//        "module": "terracodec.gdal_bridge"}
//     Each key can be overridden by a config option / environment variable:
//     TEC_PYTHON, TEC_LIBPYTHON, TEC_PYTHONPATH (':'-separated), TEC_PYTHON_MODULE.
//  2. If Python symbols are already global in the process (python executable, rasterio, osgeo,
//     QGIS), use them. Else, if a libpython was loaded privately (RTLD_LOCAL), promote it with
//     dlopen(RTLD_NOLOAD | RTLD_GLOBAL). Else dlopen the configured libpython RTLD_GLOBAL (so that
//     numpy/torch extension modules can resolve Py* symbols) and embed it.
//  3. The interpreter's major.minor must equal the venv's (its compiled packages are per version).
//  4. Add the configured pythonpath entries with site.addsitedir, import the bridge module.
//  Worker mode: if step 3 fails (QGIS under Debian's python3) or step 2 finds no libpython to load,
//  or with TEC_PYTHON_WORKER=YES, start `<python> -m terracodec.gdal_worker <module>` instead
//  (PYTHONPATH = the pythonpath entries) and send every call to it over a socketpair that is its
//  stdin and stdout (protocol: terracodec/gdal_worker.py). TEC_PYTHON_WORKER=NO: no fallback.
// Every later call takes the GIL with PyGILState_Ensure (safe from any GDAL worker thread and
// re-entrant when the caller already holds the GIL, as rasterio does during CreateCopy).
// Python is never finalised (numpy/torch do not support re-initialisation).

#include "tec_python.h"

#include <dlfcn.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <vector>

#include "cpl_conv.h"
#include "cpl_error.h"
#include "cpl_json.h"
#include "cpl_string.h"

extern char **environ;

namespace tec
{
namespace
{

typedef struct _object PyObject;  // opaque: only handled through API functions
typedef long Py_ssize_t_;

struct PyAPI
{
    int (*Py_IsInitialized)(void);
    void (*Py_InitializeEx)(int);
    void (*Py_SetProgramName)(const wchar_t *);  // optional (deprecated, still present)
    wchar_t *(*Py_DecodeLocale)(const char *, size_t *);
    void *(*PyEval_SaveThread)(void);
    int (*PyGILState_Ensure)(void);
    void (*PyGILState_Release)(int);
    const char *(*Py_GetVersion)(void);
    PyObject *(*PyImport_ImportModule)(const char *);
    PyObject *(*PyObject_GetAttrString)(PyObject *, const char *);
    PyObject *(*PyObject_CallObject)(PyObject *, PyObject *);
    PyObject *(*PyTuple_New)(Py_ssize_t_);
    int (*PyTuple_SetItem)(PyObject *, Py_ssize_t_, PyObject *);
    PyObject *(*PyUnicode_FromString)(const char *);
    const char *(*PyUnicode_AsUTF8AndSize)(PyObject *, Py_ssize_t_ *);
    PyObject *(*PyLong_FromLongLong)(long long);
    PyObject *(*PyMemoryView_FromMemory)(char *, Py_ssize_t_, int);
    int (*PyBytes_AsStringAndSize)(PyObject *, char **, Py_ssize_t_ *);
    PyObject *(*PyObject_Str)(PyObject *);
    void (*Py_IncRef)(PyObject *);
    void (*Py_DecRef)(PyObject *);
    PyObject *(*PyErr_Occurred)(void);
    void (*PyErr_Fetch)(PyObject **, PyObject **, PyObject **);
    void (*PyErr_NormalizeException)(PyObject **, PyObject **, PyObject **);
    void (*PyErr_Clear)(void);
    PyObject *Py_None;
};

constexpr int kPyBUF_READ = 0x100;

PyAPI g_api;
std::mutex g_initMutex;
bool g_initDone = false;
bool g_initOK = false;
std::string g_initError;
std::mutex g_descMutex;  // guards g_hostDescription (a restarted worker changes it)
std::string g_hostDescription = "Python not started";
PyObject *g_module = nullptr;
bool g_useWorker = false;  // calls go to the worker process (set once, by InitLocked)

struct Config
{
    std::string osPython, osVersion, osLibPython, osModule = "terracodec.gdal_bridge";
    std::vector<std::string> aosPythonPath;
};

std::string PluginDirectory()
{
    Dl_info info;
    if (dladdr(reinterpret_cast<void *>(&PyHostDescription), &info) && info.dli_fname)
        return CPLGetPath(info.dli_fname);
    return std::string();
}

Config LoadConfig()
{
    Config cfg;
    const std::string osDir = PluginDirectory();
    const std::string osFile = CPLFormFilename(osDir.c_str(), "gdal_TEC", "json");
    VSIStatBufL sStat;
    if (!osDir.empty() && VSIStatL(osFile.c_str(), &sStat) == 0)
    {
        CPLJSONDocument oDoc;
        if (oDoc.Load(osFile))
        {
            const CPLJSONObject oRoot = oDoc.GetRoot();
            cfg.osPython = oRoot.GetString("python");
            cfg.osVersion = oRoot.GetString("python_version");
            cfg.osLibPython = oRoot.GetString("libpython");
            cfg.osModule = oRoot.GetString("module", cfg.osModule);
            for (const auto &oItem : oRoot.GetArray("pythonpath"))
                cfg.aosPythonPath.push_back(oItem.ToString());
        }
        else
            CPLDebug("TEC", "cannot parse %s", osFile.c_str());
    }
    else
        CPLDebug("TEC", "no %s; relying on TEC_* options", osFile.c_str());
    if (const char *p = CPLGetConfigOption("TEC_PYTHON", nullptr))
        cfg.osPython = p;
    if (const char *p = CPLGetConfigOption("TEC_LIBPYTHON", nullptr))
        cfg.osLibPython = p;
    if (const char *p = CPLGetConfigOption("TEC_PYTHON_MODULE", nullptr))
        cfg.osModule = p;
    if (const char *p = CPLGetConfigOption("TEC_PYTHONPATH", nullptr))
    {
        const CPLStringList aos(CSLTokenizeString2(p, ":", 0));
        for (int i = 0; i < aos.size(); ++i)
            cfg.aosPythonPath.insert(cfg.aosPythonPath.begin() + i, aos[i]);
    }
    return cfg;
}

template <class T> bool Bind(void *handle, const char *name, T &fn, bool required = true)
{
    fn = reinterpret_cast<T>(dlsym(handle, name));
    if (!fn && required)
    {
        g_initError = std::string("Python symbol ") + name + " not found";
        return false;
    }
    return true;
}

bool BindAll(void *h)
{
    PyAPI &a = g_api;
    bool ok = Bind(h, "Py_IsInitialized", a.Py_IsInitialized) &&
              Bind(h, "Py_InitializeEx", a.Py_InitializeEx) &&
              Bind(h, "Py_SetProgramName", a.Py_SetProgramName, false) &&
              Bind(h, "Py_DecodeLocale", a.Py_DecodeLocale) &&
              Bind(h, "PyEval_SaveThread", a.PyEval_SaveThread) &&
              Bind(h, "PyGILState_Ensure", a.PyGILState_Ensure) &&
              Bind(h, "PyGILState_Release", a.PyGILState_Release) &&
              Bind(h, "Py_GetVersion", a.Py_GetVersion) &&
              Bind(h, "PyImport_ImportModule", a.PyImport_ImportModule) &&
              Bind(h, "PyObject_GetAttrString", a.PyObject_GetAttrString) &&
              Bind(h, "PyObject_CallObject", a.PyObject_CallObject) &&
              Bind(h, "PyTuple_New", a.PyTuple_New) &&
              Bind(h, "PyTuple_SetItem", a.PyTuple_SetItem) &&
              Bind(h, "PyUnicode_FromString", a.PyUnicode_FromString) &&
              Bind(h, "PyUnicode_AsUTF8AndSize", a.PyUnicode_AsUTF8AndSize) &&
              Bind(h, "PyLong_FromLongLong", a.PyLong_FromLongLong) &&
              Bind(h, "PyMemoryView_FromMemory", a.PyMemoryView_FromMemory) &&
              Bind(h, "PyBytes_AsStringAndSize", a.PyBytes_AsStringAndSize) &&
              Bind(h, "PyObject_Str", a.PyObject_Str) && Bind(h, "Py_IncRef", a.Py_IncRef) &&
              Bind(h, "Py_DecRef", a.Py_DecRef) && Bind(h, "PyErr_Occurred", a.PyErr_Occurred) &&
              Bind(h, "PyErr_Fetch", a.PyErr_Fetch) &&
              Bind(h, "PyErr_NormalizeException", a.PyErr_NormalizeException) &&
              Bind(h, "PyErr_Clear", a.PyErr_Clear);
    if (ok)
    {
        a.Py_None = reinterpret_cast<PyObject *>(dlsym(h, "_Py_NoneStruct"));
        if (!a.Py_None)
        {
            g_initError = "Python symbol _Py_NoneStruct not found";
            ok = false;
        }
    }
    return ok;
}

// ---- small helpers (GIL held) -------------------------------------------------------------
void DecRef(PyObject *o)
{
    if (o)
        g_api.Py_DecRef(o);
}

std::string ToStr(PyObject *o)
{
    std::string s;
    if (!o)
        return s;
    PyObject *str = g_api.PyObject_Str(o);
    if (str)
    {
        Py_ssize_t_ n = 0;
        const char *c = g_api.PyUnicode_AsUTF8AndSize(str, &n);
        if (c)
            s.assign(c, static_cast<size_t>(n));
        DecRef(str);
    }
    if (g_api.PyErr_Occurred())
        g_api.PyErr_Clear();
    return s;
}

// Consume the pending Python exception: returns "TypeName: message"; the full traceback goes to
// CPLDebug("TEC") (visible with CPL_DEBUG=TEC).
std::string FetchError()
{
    PyObject *t = nullptr, *v = nullptr, *tb = nullptr;
    g_api.PyErr_Fetch(&t, &v, &tb);
    if (!t)
        return "unknown Python error";
    g_api.PyErr_NormalizeException(&t, &v, &tb);
    std::string osName = "Exception";
    if (PyObject *n = g_api.PyObject_GetAttrString(t, "__name__"))
    {
        osName = ToStr(n);
        DecRef(n);
    }
    std::string osMsg = v ? ToStr(v) : std::string();
    // Traceback for debugging.
    if (PyObject *mod = g_api.PyImport_ImportModule("traceback"))
    {
        if (PyObject *fn = g_api.PyObject_GetAttrString(mod, "format_exception"))
        {
            PyObject *args = g_api.PyTuple_New(3);
            PyObject *items[3] = {t, v ? v : g_api.Py_None, tb ? tb : g_api.Py_None};
            for (int i = 0; i < 3; ++i)
            {
                g_api.Py_IncRef(items[i]);
                g_api.PyTuple_SetItem(args, i, items[i]);
            }
            PyObject *lines = g_api.PyObject_CallObject(fn, args);
            DecRef(args);
            if (lines)
            {
                PyObject *sep = g_api.PyUnicode_FromString("");
                PyObject *join = sep ? g_api.PyObject_GetAttrString(sep, "join") : nullptr;
                if (join)
                {
                    PyObject *a1 = g_api.PyTuple_New(1);
                    g_api.Py_IncRef(lines);
                    g_api.PyTuple_SetItem(a1, 0, lines);
                    PyObject *text = g_api.PyObject_CallObject(join, a1);
                    DecRef(a1);
                    if (text)
                        CPLDebug("TEC", "Python traceback:\n%s", ToStr(text).c_str());
                    DecRef(text);
                }
                DecRef(join);
                DecRef(sep);
                DecRef(lines);
            }
            DecRef(fn);
        }
        DecRef(mod);
    }
    if (g_api.PyErr_Occurred())
        g_api.PyErr_Clear();
    DecRef(t);
    DecRef(v);
    DecRef(tb);
    return osMsg.empty() ? osName : osName + ": " + osMsg;
}

// Call `callable(*args)`; steals the references in `args`. Returns a new reference or null.
PyObject *Call(PyObject *callable, std::initializer_list<PyObject *> args)
{
    PyObject *tuple = g_api.PyTuple_New(static_cast<Py_ssize_t_>(args.size()));
    if (!tuple)
    {
        for (PyObject *o : args)
            DecRef(o);
        return nullptr;
    }
    Py_ssize_t_ i = 0;
    bool bad = false;
    for (PyObject *o : args)
    {
        if (!o)
            bad = true;
        else
            g_api.PyTuple_SetItem(tuple, i, o);
        ++i;
    }
    PyObject *res = bad ? nullptr : g_api.PyObject_CallObject(callable, tuple);
    DecRef(tuple);
    return res;
}

PyObject *CallMethod(PyObject *obj, const char *name, std::initializer_list<PyObject *> args)
{
    PyObject *m = g_api.PyObject_GetAttrString(obj, name);
    if (!m)
    {
        for (PyObject *o : args)
            DecRef(o);
        return nullptr;
    }
    PyObject *res = Call(m, args);
    DecRef(m);
    return res;
}

std::string MajorMinor(const char *version)
{
    // "3.11.7 (main, ...)" -> "3.11"
    std::string s(version ? version : "");
    size_t p1 = s.find('.');
    if (p1 == std::string::npos)
        return s;
    size_t p2 = p1 + 1;
    while (p2 < s.size() && s[p2] >= '0' && s[p2] <= '9')
        ++p2;
    return s.substr(0, p2);
}

void SetHostDescription(const std::string &s)
{
    std::lock_guard<std::mutex> lock(g_descMutex);
    g_hostDescription = s;
}

// ---- worker process ----------------------------------------------------------------------------
// Its stdin and stdout are one end of a UNIX socketpair: send(MSG_NOSIGNAL) to a dead worker
// fails with EPIPE instead of raising SIGPIPE in the host. One request/response at a time.
// CPLDebug runs after the mutex is released (osDebug): a Python host's CPL error handler takes
// its GIL, which a thread waiting for the mutex may hold (rasterio during CreateCopy).
struct Worker
{
    std::mutex mutex;
    Config cfg;  // python, pythonpath, module
    int fd = -1;
    pid_t pid = -1;
    pid_t owner = -1;  // the process that started it (not a fork() of it)
};
Worker g_worker;
std::atomic<long long> g_nextObjectId{1};

struct Arg  // one value of a request: 'i' int, 's' str, 'b' bytes
{
    char tag;
    long long i;
    const void *p;
    size_t n;
};
Arg Int(long long v) { return {'i', v, nullptr, 0}; }
Arg Str(const std::string &s) { return {'s', 0, s.data(), s.size()}; }
Arg Bytes(const void *p, size_t n) { return {'b', 0, p, n}; }

void PutU64(std::string &s, uint64_t v)
{
    for (int k = 0; k < 8; ++k)
        s += static_cast<char>((v >> (8 * k)) & 0xff);
}

bool SendAll(int fd, const void *p, size_t n)
{
    const char *c = static_cast<const char *>(p);
    while (n > 0)
    {
        const ssize_t k = send(fd, c, n, MSG_NOSIGNAL);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            return false;
        c += k;
        n -= static_cast<size_t>(k);
    }
    return true;
}

bool RecvAll(int fd, void *p, size_t n)
{
    char *c = static_cast<char *>(p);
    while (n > 0)
    {
        const ssize_t k = recv(fd, c, n, 0);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            return false;
        c += k;
        n -= static_cast<size_t>(k);
    }
    return true;
}

// Frame: u64 LE body length, body = values (tag, then i64 or u64 length + bytes). Large byte
// arguments are sent from where they are, not copied.
bool SendRequest(int fd, std::initializer_list<Arg> args)
{
    uint64_t nBody = 0;
    for (const Arg &a : args)
        nBody += 9 + (a.tag == 'i' ? 0 : a.n);
    std::string buf;
    PutU64(buf, nBody);
    for (const Arg &a : args)
    {
        buf += a.tag;
        PutU64(buf, a.tag == 'i' ? static_cast<uint64_t>(a.i) : a.n);
        if (a.tag == 'i')
            continue;
        if (a.n < 65536)
            buf.append(static_cast<const char *>(a.p), a.n);
        else if (!SendAll(fd, buf.data(), buf.size()) || !SendAll(fd, a.p, a.n))
            return false;
        else
            buf.clear();
    }
    return SendAll(fd, buf.data(), buf.size());
}

// Reads one response: returns 'O' or 'E', or 0 if the worker is gone or out of step. An 'O'
// result exactly nExpected bytes long goes to dst (bInDst), anything else to osData.
char ReadResponseLocked(void *dst, size_t nExpected, std::string &osData, bool &bInDst)
{
    unsigned char head[9];
    bInDst = false;
    if (!RecvAll(g_worker.fd, head, sizeof(head)))
        return 0;
    uint64_t n = 0;
    for (int k = 7; k >= 0; --k)
        n = (n << 8) | head[k];
    const char status = static_cast<char>(head[8]);
    if (n == 0 || (status != 'O' && status != 'E'))
        return 0;
    --n;
    if (status == 'O' && dst && n == nExpected)
    {
        bInDst = true;
        return RecvAll(g_worker.fd, dst, n) ? status : 0;
    }
    if (n > (size_t{1} << 30))  // only pixel results are large, and they went to dst
        return 0;
    osData.assign(static_cast<size_t>(n), '\0');
    return RecvAll(g_worker.fd, &osData[0], osData.size()) ? status : 0;
}

// "Type: message" of an error response; its traceback goes to osDebug.
std::string WorkerError(const std::string &osData, std::string &osDebug)
{
    const size_t nz = osData.find('\0');
    if (nz != std::string::npos)
        osDebug += std::string(osDebug.empty() ? "" : "\n") + "Python traceback (worker):\n" +
                   osData.substr(nz + 1);
    return osData.substr(0, nz);
}

// Closes the socket and reaps the worker; returns how it ended.
std::string StopWorkerLocked()
{
    if (g_worker.fd >= 0)
        close(g_worker.fd);
    g_worker.fd = -1;
    if (g_worker.pid <= 0)
        return "not running";
    int st = 0;
    pid_t r = 0;
    // At end of input it exits by itself (or it has died already): wait a second, then kill it.
    for (int i = 0; i < 100 && (r = waitpid(g_worker.pid, &st, WNOHANG)) == 0; ++i)
        usleep(10000);
    if (r == 0)
    {
        kill(g_worker.pid, SIGKILL);
        while ((r = waitpid(g_worker.pid, &st, 0)) < 0 && errno == EINTR)
        {
        }
    }
    g_worker.pid = -1;
    if (r <= 0)
        return "exit status unknown";
    if (WIFSIGNALED(st))
        return CPLSPrintf("killed by signal %d", WTERMSIG(st));
    return CPLSPrintf("exit status %d", WEXITSTATUS(st));
}

bool StartWorkerLocked(std::string &osError, std::string &osDebug)
{
    const Config &cfg = g_worker.cfg;
    if (cfg.osPython.empty())
    {
        osError = "no Python executable configured for the worker process (\"python\" in "
                  "gdal_TEC.json, or TEC_PYTHON)";
        return false;
    }
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0)
    {
        osError = std::string("socketpair: ") + strerror(errno);
        return false;
    }
    if (sv[1] < 2)  // dup2 onto itself would keep O_CLOEXEC (host started with stdin closed)
    {
        const int d = fcntl(sv[1], F_DUPFD_CLOEXEC, 3);
        close(sv[1]);
        sv[1] = d;
    }
    // Environment: the host's, PYTHONPATH = the configured entries first, no PYTHONHOME (the
    // host's, if any, is for its own Python).
    std::string osPath;
    for (const auto &p : cfg.aosPythonPath)
        osPath += (osPath.empty() ? "" : ":") + p;
    std::vector<std::string> aosEnv;
    for (char **e = environ; e && *e; ++e)
    {
        if (STARTS_WITH(*e, "PYTHONPATH="))
            osPath += std::string(osPath.empty() ? "" : ":") + (*e + 11);
        else if (!STARTS_WITH(*e, "PYTHONHOME="))
            aosEnv.push_back(*e);
    }
    aosEnv.push_back("PYTHONPATH=" + osPath);
    std::vector<char *> envp;
    for (auto &s : aosEnv)
        envp.push_back(&s[0]);
    envp.push_back(nullptr);
    const char *argv[] = {cfg.osPython.c_str(), "-m", "terracodec.gdal_worker",
                          cfg.osModule.c_str(), nullptr};

    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, sv[1], 0);
    posix_spawn_file_actions_adddup2(&fa, sv[1], 1);
#if defined(__GLIBC__) && (__GLIBC__ > 2 || __GLIBC_MINOR__ >= 34)
    posix_spawn_file_actions_addclosefrom_np(&fa, 3);  // the host's files are not its business
#endif
    posix_spawnattr_t attr;
    posix_spawnattr_init(&attr);
    sigset_t none;
    sigemptyset(&none);
    posix_spawnattr_setsigmask(&attr, &none);  // the calling thread may block signals
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK);
    pid_t pid = -1;
    const int rc = sv[1] < 0 ? errno
                             : posix_spawn(&pid, argv[0], &fa, &attr, const_cast<char **>(argv),
                                           envp.data());
    posix_spawnattr_destroy(&attr);
    posix_spawn_file_actions_destroy(&fa);
    if (sv[1] >= 0)
        close(sv[1]);
    if (rc != 0)
    {
        close(sv[0]);
        osError = "cannot start the worker process " + cfg.osPython + ": " + strerror(rc);
        return false;
    }
    g_worker.fd = sv[0];
    g_worker.pid = pid;
    g_worker.owner = getpid();

    // It answers first: "O" + its Python version, or "E" if the bridge cannot be imported.
    std::string osData;
    bool bInDst = false;
    const char status = ReadResponseLocked(nullptr, 0, osData, bInDst);
    if (status != 'O')
    {
        const std::string osWhy = status == 'E' ? WorkerError(osData, osDebug) : std::string();
        const std::string osEnd = StopWorkerLocked();
        osError = "the worker process " + cfg.osPython + " -m terracodec.gdal_worker failed (" +
                  osEnd + (osWhy.empty() ? ", see its messages above)" : "): " + osWhy);
        return false;
    }
    SetHostDescription(CPLSPrintf("worker %s (pid %ld, Python %s)", cfg.osPython.c_str(),
                                  static_cast<long>(pid), MajorMinor(osData.c_str()).c_str()));
    osDebug = "Python: " + PyHostDescription();
    return true;
}

// One request/response, (re)starting the worker if needed (bStart). A result of exactly
// nExpected bytes goes to dst; an exception in the worker becomes osError ("Type: message").
bool WorkerCallLocked(const char *pszFunc, std::initializer_list<Arg> args, void *dst,
                      size_t nExpected, std::string &osError, std::string &osDebug, bool bStart)
{
    if (g_worker.fd >= 0 && g_worker.owner != getpid())
    {
        // A fork()ed host (multiprocessing) must not share its parent's worker: start its own.
        close(g_worker.fd);
        g_worker.fd = -1;
        g_worker.pid = -1;
    }
    if (g_worker.fd < 0)
    {
        if (!bStart)
        {
            osError = "the worker process is not running";
            return false;
        }
        if (!StartWorkerLocked(osError, osDebug))
            return false;
    }
    std::string osData;
    bool bInDst = false;
    const long pid = static_cast<long>(g_worker.pid);
    const char status = SendRequest(g_worker.fd, args)
                            ? ReadResponseLocked(dst, nExpected, osData, bInDst)
                            : 0;
    if (status == 0)
    {
        const std::string osEnd = StopWorkerLocked();
        osError = CPLSPrintf("the Python worker process (pid %ld) died during %s (%s); the next "
                             "call starts a new one",
                             pid, pszFunc, osEnd.c_str());
        return false;
    }
    if (status == 'E')
    {
        osError = WorkerError(osData, osDebug);
        return false;
    }
    if (dst && !bInDst)
    {
        osError = CPLSPrintf("%s returned %lu bytes, expected %lu", pszFunc,
                             static_cast<unsigned long>(osData.size()),
                             static_cast<unsigned long>(nExpected));
        return false;
    }
    return true;
}

bool WorkerCall(const char *pszFunc, std::initializer_list<Arg> args, void *dst,
                size_t nExpected, std::string &osError, bool bStart = true)
{
    std::string osDebug;
    bool ok;
    {
        std::lock_guard<std::mutex> lock(g_worker.mutex);
        ok = WorkerCallLocked(pszFunc, args, dst, nExpected, osError, osDebug, bStart);
    }
    if (!osDebug.empty())
        CPLDebug("TEC", "%s", osDebug.c_str());
    return ok;
}

// Switch to the worker process; g_initError says why if it cannot start.
bool InitWorker(const Config &cfg)
{
    g_useWorker = true;
    std::string osDebug;
    bool ok;
    {
        std::lock_guard<std::mutex> lock(g_worker.mutex);
        g_worker.cfg = cfg;
        ok = StartWorkerLocked(g_initError, osDebug);
    }
    if (!osDebug.empty())
        CPLDebug("TEC", "%s", osDebug.c_str());
    return ok;
}

// The in-process interpreter cannot be used (g_initError says why): use the worker, unless
// TEC_PYTHON_WORKER=NO.
bool FallBackToWorker(const Config &cfg, bool bAllowed)
{
    if (!bAllowed)
        return false;
    CPLDebug("TEC", "%s: using a worker process", g_initError.c_str());
    const std::string osWhy = g_initError;
    if (InitWorker(cfg))
        return true;
    g_initError = osWhy + "; " + g_initError;
    return false;
}

// ---- initialisation --------------------------------------------------------------------------
bool InitLocked()
{
    const Config cfg = LoadConfig();
    const std::string osWorker = CPLGetConfigOption("TEC_PYTHON_WORKER", "AUTO");
    const bool bAutoWorker = EQUAL(osWorker.c_str(), "AUTO");
    if (!bAutoWorker && CPLTestBool(osWorker.c_str()))
        return InitWorker(cfg);
    void *handle = nullptr;
    std::string osHow;

    if (dlsym(RTLD_DEFAULT, "Py_IsInitialized") && dlsym(RTLD_DEFAULT, "PyGILState_Ensure"))
    {
        handle = RTLD_DEFAULT;
        osHow = "host process (global)";
    }
    else
    {
        // A libpython loaded privately (RTLD_LOCAL) by the host: promote it.
        std::vector<std::string> candidates;
        if (!cfg.osLibPython.empty())
            candidates.push_back(CPLGetFilename(cfg.osLibPython.c_str()));
        for (int minor = 8; minor <= 14; ++minor)
            candidates.push_back(CPLSPrintf("libpython3.%d.so.1.0", minor));
        for (const auto &c : candidates)
        {
            handle = dlopen(c.c_str(), RTLD_NOW | RTLD_NOLOAD | RTLD_GLOBAL);
            if (handle)
            {
                osHow = "host process (" + c + " promoted to RTLD_GLOBAL)";
                break;
            }
        }
        if (!handle)
        {
            if (cfg.osLibPython.empty())
            {
                g_initError = "no Python in this process and no libpython configured (run "
                              "`make -C gdal_plugin install`, or set TEC_LIBPYTHON)";
                return FallBackToWorker(cfg, bAutoWorker);
            }
            handle = dlopen(cfg.osLibPython.c_str(), RTLD_NOW | RTLD_GLOBAL);
            if (!handle)
            {
                const char *e = dlerror();
                g_initError = "cannot load " + cfg.osLibPython + ": " + (e ? e : "?");
                return FallBackToWorker(cfg, bAutoWorker);
            }
            osHow = "embedded " + cfg.osLibPython;
        }
    }
    if (!BindAll(handle))
        return false;

    const std::string osRuntime = MajorMinor(g_api.Py_GetVersion());
    if (!cfg.osVersion.empty() && osRuntime != cfg.osVersion)
    {
        g_initError = "this process runs Python " + osRuntime +
                      " but the terracodec environment is Python " + cfg.osVersion +
                      " (its compiled packages cannot be loaded here)";
        return FallBackToWorker(cfg, bAutoWorker);
    }

    bool bEmbedded = false;
    if (!g_api.Py_IsInitialized())
    {
        if (!cfg.osPython.empty() && g_api.Py_SetProgramName)
        {
            // The venv's python as program name: sys.prefix becomes the venv (pyvenv.cfg).
            wchar_t *w = g_api.Py_DecodeLocale(cfg.osPython.c_str(), nullptr);
            if (w)
                g_api.Py_SetProgramName(w);  // must stay alive: intentionally never freed
        }
        g_api.Py_InitializeEx(0);  // 0: leave SIGINT etc. to the host application
        if (!g_api.Py_IsInitialized())
        {
            g_initError = "cannot initialise Python";
            return false;
        }
        g_api.PyEval_SaveThread();  // release the GIL; every call takes it with GILState
        bEmbedded = true;
    }
    SetHostDescription(osHow + ", Python " + std::string(g_api.Py_GetVersion()).substr(0, 20));
    CPLDebug("TEC", "Python: %s", PyHostDescription().c_str());

    const int st = g_api.PyGILState_Ensure();
    bool ok = true;
    // sys.path: site.addsitedir honours .pth files (editable installs).
    if (!cfg.aosPythonPath.empty())
    {
        PyObject *sys = g_api.PyImport_ImportModule("sys");
        PyObject *path = sys ? g_api.PyObject_GetAttrString(sys, "path") : nullptr;
        PyObject *site = g_api.PyImport_ImportModule("site");
        // The host's entries, to put behind the added ones below.
        PyObject *hostPath = path ? CallMethod(path, "copy", {}) : nullptr;
        if (!path || !site || !hostPath)
        {
            g_initError = "cannot import sys/site: " + FetchError();
            ok = false;
        }
        for (size_t i = 0; ok && i < cfg.aosPythonPath.size(); ++i)
        {
            const std::string &p = cfg.aosPythonPath[i];
            PyObject *contains =
                CallMethod(path, "__contains__", {g_api.PyUnicode_FromString(p.c_str())});
            const bool present = contains && ToStr(contains) == "True";
            DecRef(contains);
            if (present)
                continue;
            PyObject *r = CallMethod(site, "addsitedir", {g_api.PyUnicode_FromString(p.c_str())});
            if (!r)
                CPLDebug("TEC", "site.addsitedir(%s) failed: %s", p.c_str(), FetchError().c_str());
            DecRef(r);
        }
        // site.addsitedir appends, so in a host with its own interpreter (QGIS under the system
        // python3) the host's site-packages would shadow the environment's: e.g. torch importing
        // sympy lazily, mid-decode, would get Debian's older sympy and fail for some tiles only.
        // Put the added entries (and what their .pth files added) first, keeping both orders:
        //   sys.path[:] = [p for p in sys.path if p not in host] + host
        // Modules the host already imported stay as they are.
        if (ok)
        {
            PyObject *itertools = g_api.PyImport_ImportModule("itertools");
            PyObject *builtins = g_api.PyImport_ImportModule("builtins");
            PyObject *listType = builtins ? g_api.PyObject_GetAttrString(builtins, "list") : nullptr;
            PyObject *inHost = g_api.PyObject_GetAttrString(hostPath, "__contains__");
            PyObject *added = nullptr;
            if (itertools && listType && inHost)
            {
                g_api.Py_IncRef(path);
                PyObject *it = CallMethod(itertools, "filterfalse", {inHost, path});
                inHost = nullptr;  // stolen
                added = it ? Call(listType, {it}) : nullptr;
            }
            PyObject *r1 = nullptr, *r2 = nullptr, *r3 = nullptr;
            if (added)
            {
                g_api.Py_IncRef(hostPath);
                r1 = CallMethod(added, "extend", {hostPath});
            }
            if (r1)
                r2 = CallMethod(path, "clear", {});
            if (r2)
            {
                g_api.Py_IncRef(added);
                r3 = CallMethod(path, "extend", {added});
            }
            if (!r3)
                CPLDebug("TEC", "cannot reorder sys.path: %s", FetchError().c_str());
            DecRef(r1);
            DecRef(r2);
            DecRef(r3);
            DecRef(added);
            DecRef(inHost);
            DecRef(listType);
            DecRef(builtins);
            DecRef(itertools);
        }
        DecRef(hostPath);
        DecRef(site);
        DecRef(path);
        DecRef(sys);
    }
    if (ok)
    {
        g_module = g_api.PyImport_ImportModule(cfg.osModule.c_str());
        if (!g_module)
        {
            g_initError = "cannot import " + cfg.osModule + ": " + FetchError();
            ok = false;
        }
    }
    g_api.PyGILState_Release(st);
    (void)bEmbedded;
    return ok;
}

bool EnsurePython(std::string &osError)
{
    std::lock_guard<std::mutex> lock(g_initMutex);
    if (!g_initDone)
    {
        g_initOK = InitLocked();
        g_initDone = true;
        if (!g_initOK)
            CPLDebug("TEC", "Python bridge unavailable: %s", g_initError.c_str());
    }
    if (!g_initOK)
        osError = "Python bridge unavailable: " + g_initError;
    return g_initOK;
}

class GIL
{
  public:
    GIL() : m_state(g_api.PyGILState_Ensure()) {}
    ~GIL() { g_api.PyGILState_Release(m_state); }

  private:
    int m_state;
};

PyObject *MemView(const void *data, size_t n)
{
    return g_api.PyMemoryView_FromMemory(const_cast<char *>(static_cast<const char *>(data)),
                                         static_cast<Py_ssize_t_>(n), kPyBUF_READ);
}

// Release a memoryview over C++ memory so that Python cannot touch it after the call.
void ReleaseView(PyObject *view)
{
    if (!view)
        return;
    PyObject *r = CallMethod(view, "release", {});
    if (!r && g_api.PyErr_Occurred())
        g_api.PyErr_Clear();
    DecRef(r);
    DecRef(view);
}

}  // namespace

std::string PyHostDescription()
{
    std::lock_guard<std::mutex> lock(g_descMutex);
    return g_hostDescription;
}

// Copy a bytes result of exactly nExpectedBytes to dst (consumes `res`).
static bool TakeBytes(PyObject *res, const char *pszFunc, void *dst, size_t nExpectedBytes,
                      std::string &osError)
{
    char *p = nullptr;
    Py_ssize_t_ n = 0;
    bool ok = false;
    if (g_api.PyBytes_AsStringAndSize(res, &p, &n) != 0)
        osError = std::string(pszFunc) + " did not return bytes: " + FetchError();
    else if (static_cast<size_t>(n) != nExpectedBytes)
        osError = CPLSPrintf("%s returned %ld bytes, expected %lu", pszFunc, static_cast<long>(n),
                             static_cast<unsigned long>(nExpectedBytes));
    else
    {
        memcpy(dst, p, nExpectedBytes);
        ok = true;
    }
    DecRef(res);
    return ok;
}

bool PyDecodeTile(const void *payload, size_t nPayloadBytes, const std::string &osModel,
                  int nCount, int nHeight, int nWidth, const std::string &osDType, void *dst,
                  size_t nExpectedBytes, std::string &osError)
{
    if (!EnsurePython(osError))
        return false;
    if (g_useWorker)
        return WorkerCall("decode_payload",
                          {Str("decode_payload"), Bytes(payload, nPayloadBytes), Str(osModel),
                           Int(nCount), Int(nHeight), Int(nWidth), Str(osDType)},
                          dst, nExpectedBytes, osError);
    GIL gil;
    PyObject *fn = g_api.PyObject_GetAttrString(g_module, "decode_payload");
    if (!fn)
    {
        osError = FetchError();
        return false;
    }
    PyObject *view = MemView(payload, nPayloadBytes);
    if (view)
        g_api.Py_IncRef(view);  // one ref for the tuple, one kept to release() it
    PyObject *res = Call(fn, {view, g_api.PyUnicode_FromString(osModel.c_str()),
                              g_api.PyLong_FromLongLong(nCount), g_api.PyLong_FromLongLong(nHeight),
                              g_api.PyLong_FromLongLong(nWidth),
                              g_api.PyUnicode_FromString(osDType.c_str())});
    DecRef(fn);
    bool ok = false;
    if (res)
        ok = TakeBytes(res, "decode_payload", dst, nExpectedBytes, osError);
    else
        osError = FetchError();
    ReleaseView(view);
    return ok;
}

bool PyReadWindow(const std::string &osPath, int nDate, int nXOff, int nYOff, int nXSize,
                  int nYSize, int nLevel, void *dst, size_t nExpectedBytes, std::string &osError)
{
    if (!EnsurePython(osError))
        return false;
    if (g_useWorker)
    {
        // The worker's current directory is the host's when it started.
        std::string osAbs = osPath;
        if (CPLIsFilenameRelative(osPath.c_str()))
        {
            char *pszCwd = CPLGetCurrentDir();
            if (pszCwd)
                osAbs = CPLFormFilename(pszCwd, osPath.c_str(), nullptr);
            CPLFree(pszCwd);
        }
        return WorkerCall("read_window",
                          {Str("read_window"), Str(osAbs), Int(nDate), Int(nXOff), Int(nYOff),
                           Int(nXSize), Int(nYSize), Int(nLevel)},
                          dst, nExpectedBytes, osError);
    }
    GIL gil;
    PyObject *fn = g_api.PyObject_GetAttrString(g_module, "read_window");
    if (!fn)
    {
        osError = FetchError();
        return false;
    }
    PyObject *res = Call(fn, {g_api.PyUnicode_FromString(osPath.c_str()),
                              g_api.PyLong_FromLongLong(nDate), g_api.PyLong_FromLongLong(nXOff),
                              g_api.PyLong_FromLongLong(nYOff), g_api.PyLong_FromLongLong(nXSize),
                              g_api.PyLong_FromLongLong(nYSize),
                              g_api.PyLong_FromLongLong(nLevel)});
    DecRef(fn);
    if (!res)
    {
        osError = FetchError();
        return false;
    }
    return TakeBytes(res, "read_window", dst, nExpectedBytes, osError);
}

PyEncoder::~PyEncoder()
{
    Abort();
}

bool PyEncoder::Open(const std::string &osParamsJSON, std::string &osError)
{
    if (!EnsurePython(osError))
        return false;
    if (g_useWorker)
    {
        const long long id = g_nextObjectId++;
        if (!WorkerCall("Encoder", {Str("new Encoder"), Int(id), Str(osParamsJSON)}, nullptr, 0,
                        osError))
            return false;
        m_nWorkerId = id;
        return true;
    }
    GIL gil;
    PyObject *cls = g_api.PyObject_GetAttrString(g_module, "Encoder");
    if (!cls)
    {
        osError = FetchError();
        return false;
    }
    PyObject *obj = Call(cls, {g_api.PyUnicode_FromString(osParamsJSON.c_str())});
    DecRef(cls);
    if (!obj)
    {
        osError = FetchError();
        return false;
    }
    m_poObj = obj;
    return true;
}

bool PyEncoder::WriteRows(const void *data, size_t nBytes, int nRows, std::string &osError)
{
    if (m_nWorkerId)
        return WorkerCall("Encoder.write_rows",
                          {Str(".write_rows"), Int(m_nWorkerId), Bytes(data, nBytes), Int(nRows)},
                          nullptr, 0, osError);
    if (!m_poObj)
    {
        osError = "encoder is not open";
        return false;
    }
    GIL gil;
    PyObject *view = MemView(data, nBytes);
    if (view)
        g_api.Py_IncRef(view);
    PyObject *res = CallMethod(static_cast<PyObject *>(m_poObj), "write_rows",
                               {view, g_api.PyLong_FromLongLong(nRows)});
    const bool ok = res != nullptr;
    if (!ok)
        osError = FetchError();
    DecRef(res);
    ReleaseView(view);
    return ok;
}

bool PyEncoder::Close(std::string &osError)
{
    if (m_nWorkerId)
    {
        const long long id = m_nWorkerId;
        m_nWorkerId = 0;
        std::string osIgnored;
        const bool ok = WorkerCall("Encoder.close", {Str(".close"), Int(id)}, nullptr, 0, osError);
        if (!ok)
            WorkerCall("Encoder.abort", {Str(".abort"), Int(id)}, nullptr, 0, osIgnored, false);
        WorkerCall("del", {Str("del"), Int(id)}, nullptr, 0, osIgnored, false);
        return ok;
    }
    if (!m_poObj)
    {
        osError = "encoder is not open";
        return false;
    }
    GIL gil;
    PyObject *obj = static_cast<PyObject *>(m_poObj);
    m_poObj = nullptr;
    PyObject *res = CallMethod(obj, "close", {});
    bool ok = res != nullptr;
    if (!ok)
    {
        osError = FetchError();
        PyObject *r = CallMethod(obj, "abort", {});
        if (!r)
            g_api.PyErr_Clear();
        DecRef(r);
    }
    DecRef(res);
    DecRef(obj);
    return ok;
}

void PyEncoder::Abort()
{
    if (m_nWorkerId)
    {
        const long long id = m_nWorkerId;
        m_nWorkerId = 0;
        std::string osError;
        if (!WorkerCall("Encoder.abort", {Str(".abort"), Int(id)}, nullptr, 0, osError, false))
            CPLDebug("TEC", "Encoder.abort failed: %s", osError.c_str());
        WorkerCall("del", {Str("del"), Int(id)}, nullptr, 0, osError, false);
        return;
    }
    if (!m_poObj)
        return;
    GIL gil;
    PyObject *obj = static_cast<PyObject *>(m_poObj);
    m_poObj = nullptr;
    PyObject *res = CallMethod(obj, "abort", {});
    if (!res)
        CPLDebug("TEC", "Encoder.abort failed: %s", FetchError().c_str());
    DecRef(res);
    DecRef(obj);
}

}  // namespace tec
