// SPDX-License-Identifier: Apache-2.0
// Python host for the TEC GDAL driver.
//
// The plugin is NOT linked against libpython. At the first pixel access it finds a Python
// interpreter at run time (see tec_python.cpp): the one already running in the process (python,
// rasterio, osgeo, QGIS), promoted to RTLD_GLOBAL if needed, or the project venv's libpython,
// dlopen'ed RTLD_GLOBAL and embedded. The Python C API is reached through dlsym'ed function
// pointers (stable-ABI functions only), so no Python headers are needed to build the plugin.
// If the process runs another Python version (or TEC_PYTHON_WORKER=YES), the same calls go to a
// worker process running the venv's python (terracodec.gdal_worker) instead.
//
// The only Python functions called live in `terracodec.gdal_bridge`; arguments and results are
// primitive types (str, int, bytes, memoryview).
#ifndef TEC_PYTHON_H_INCLUDED
#define TEC_PYTHON_H_INCLUDED

#include <cstddef>
#include <string>

namespace tec
{

// Decode one tile payload. `payload` is the raw tile bytes read from the container; on success
// `dst` (exactly `nExpectedBytes` long) receives the tile as band-sequential little-endian pixels
// (count, height, width). On failure returns false and sets `osError`.
bool PyDecodeTile(const void *payload, size_t nPayloadBytes, const std::string &osModel,
                  int nCount, int nHeight, int nWidth, const std::string &osDType, void *dst,
                  size_t nExpectedBytes, std::string &osError);

// Decode a window of one date of the .tec file `osPath` through a cached terracodec.open(path)
// (gdal_bridge.read_window): time stack dates, whose temporal tiles refer to earlier dates, and
// images whose tiles overlap (cross-faded on read). `nDate` is the 0-based date index. `nLevel` is
// the overview level (0 = full resolution, k = reduced by 2**k; the window is in that level's
// pixel grid). On success `dst` (exactly `nExpectedBytes` long) receives band-sequential
// little-endian pixels (count, nYSize, nXSize).
bool PyReadWindow(const std::string &osPath, int nDate, int nXOff, int nYOff, int nXSize,
                  int nYSize, int nLevel, void *dst, size_t nExpectedBytes, std::string &osError);

// Streaming encoder (wraps terracodec.gdal_bridge.Encoder, itself wrapping terracodec.Writer).
class PyEncoder
{
  public:
    PyEncoder() = default;
    ~PyEncoder();
    PyEncoder(const PyEncoder &) = delete;
    PyEncoder &operator=(const PyEncoder &) = delete;

    // `osParamsJSON`: JSON object with the Writer arguments (see gdal_bridge.Encoder).
    bool Open(const std::string &osParamsJSON, std::string &osError);
    // A horizontal strip of `nRows` rows, band-sequential little-endian (count, nRows, width).
    bool WriteRows(const void *data, size_t nBytes, int nRows, std::string &osError);
    bool Close(std::string &osError);  // finish the file
    void Abort();                      // drop everything, leave no file

  private:
    void *m_poObj = nullptr;      // PyObject*
    long long m_nWorkerId = 0;  // its id in the worker process (worker mode)
};

// Diagnostic line for `CPL_DEBUG=TEC`: how Python was found ("host" / "embedded" + version, or
// "worker <python> (pid N, Python X.Y)").
std::string PyHostDescription();

}  // namespace tec

#endif
