// SPDX-License-Identifier: Apache-2.0
// GDAL raster driver "TEC" for TerraCodec (.tec) files.
//
// * Identify, Open, the JSON header, the tile index (with CRC32 checks), georeferencing, band
//   descriptions, nodata and metadata are handled here in C++: gdalinfo never starts Python.
//   Container formats 1 (64-byte prefix) and 2 (13-byte prefix, 12-byte trailer, LEB128 index,
//   bare tile payloads) are read.
// * Pixels: IReadBlock reads the tile payload through VSI, checks its CRC32, restores a bare
//   payload's common header (ExpandBareTile) and hands it to the
//   Python package (terracodec.gdal_bridge.decode_payload) which returns raw pixels. One tile
//   holds every band, so a decoded tile fills the block cache of all bands at once.
// * Overviews: power-of-two levels read through gdal_bridge.read_window(level=k), which decodes
//   tiles at reduced resolution (JPEG 2000 tiles skip their fine wavelet subbands), so -outsize
//   and zoomed-out views do not decode full resolution. External .ovr files (gdaladdo -ro) take
//   precedence.
// * Time stacks (header `dates` with >= 2 entries) are exposed as subdatasets, as netCDF/HDF do:
//   x.tec itself has no bands and lists SUBDATASET_n_NAME=TEC:"/abs/x.tec":<date> in the
//   SUBDATASETS domain; TEC:"x.tec":<date> (or a 0-based date index) opens one date. Temporal
//   tiles only decode with their earlier dates, and tiles of images written with tile_overlap > 0
//   are cross-faded with their neighbours, so such datasets read a block as a window through
//   terracodec.gdal_bridge.read_window (a cached terracodec.open(path)) instead of tile by tile.
// * CreateCopy (no Create): the source is read in strips of whole tile rows and streamed to
//   terracodec.gdal_bridge.Encoder (a terracodec.Writer), with progress and cancel. With
//   -co TEMPORAL=YES the source bands are grouped by their DATE metadata item into a time stack.
//
// File layout: docs/FORMAT.md.

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "cpl_json.h"
#include "cpl_string.h"
#include "cpl_vsi.h"
#include "gdal_frmts.h"
#include "gdal_pam.h"
#include "gdal_priv.h"
#include "ogr_spatialref.h"

#include "tec_python.h"

#include <zlib.h>

#define TEC_EXPORT extern "C" __attribute__((visibility("default")))

namespace
{

constexpr GByte kMagic[8] = {0x89, 'T', 'E', 'C', '\r', '\n', 0x1a, '\n'};
constexpr int kPrefixSize = 64;         // format 1
constexpr int kPrefix2Size = 13;        // format 2: magic, u16 major, u16 minor, u8 flags
constexpr int kTrailer2Size = 12;       // format 2, at the end: u32 header and index lengths, CRC32
constexpr int kBareKind = 0x80;         // format 2 index kind bit 7: the payload is stored bare
constexpr uint32_t kFlagHeaderDeflate = 1;  // prefix flags bit 0: the JSON header is zlib-compressed
constexpr uint32_t kFlagHeaderDictionary = 2;  // bit 1: ... with kHeaderDictionary as preset dictionary
constexpr uint32_t kFlagHeaderRaw = 4;  // bit 2 (format 2): ... as raw deflate, no zlib wrapper

// zlib preset dictionary of deflated headers: byte for byte terracodec.format.HEADER_DICTIONARY
// (docs/FORMAT.md; tests/test_format.py checks that the two agree).
const char kHeaderDictionary[] =
    R"TECDICT("crs_wkt":"GEOGCS[\"WGS 84\",DATUM[\"WGS_1984\",SPHEROID[\"WGS 84\",6378137,298.257223563,AUTHOR)TECDICT"
    R"TECDICT(ITY[\"EPSG\",\"7030\"]],AUTHORITY[\"EPSG\",\"6326\"]],PRIMEM[\"Greenwich\",0,AUTHORITY[\"EPSG\",)TECDICT"
    R"TECDICT(\"8901\"]],UNIT[\"degree\",0.0174532925199433,AUTHORITY[\"EPSG\",\"9122\"]],AXIS[\"Latitude\",NO)TECDICT"
    R"TECDICT(RTH],AXIS[\"Longitude\",EAST],AUTHORITY[\"EPSG\",\"4326\"]]","dates":["2021-06-01","2021-06-11",)TECDICT"
    R"TECDICT("2021-06-21"],"keyframe_interval":8,"temporal_tiles":0,"model":{"name":"tec-tt-v1","sha256":"bfd)TECDICT"
    R"TECDICT(ba5c5488bd4518626ffceebd7d274bbfd4034a5671541e208edb6cd7e2b46"},"model":{"name":"lossless","sha2)TECDICT"
    R"TECDICT(56":null},"dtype":"uint16","nodata":0,{"width":1068,"height":1068,"count":12,"dtype":"int16","ba)TECDICT"
    R"TECDICT(nds":["B01","B02","B03","B04","B05","B06","B07","B08","B8A","B09","B10","B11","B12"],"tile_size")TECDICT"
    R"TECDICT(:512,"tile_overlap":4,"nodata":null,"crs_wkt":"PROJCS[\"WGS 84 / UTM zone 32N\",GEOGCS[\"WGS 84\)TECDICT"
    R"TECDICT(",DATUM[\"WGS_1984\",SPHEROID[\"WGS 84\",6378137,298.257223563,AUTHORITY[\"EPSG\",\"7030\"]],AUT)TECDICT"
    R"TECDICT(HORITY[\"EPSG\",\"6326\"]],PRIMEM[\"Greenwich\",0,AUTHORITY[\"EPSG\",\"8901\"]],UNIT[\"degree\",)TECDICT"
    R"TECDICT(0.0174532925199433,AUTHORITY[\"EPSG\",\"9122\"]],AUTHORITY[\"EPSG\",\"4326\"]],PROJECTION[\"Tran)TECDICT"
    R"TECDICT(sverse_Mercator\"],PARAMETER[\"latitude_of_origin\",0],PARAMETER[\"central_meridian\",9],PARAMET)TECDICT"
    R"TECDICT(ER[\"scale_factor\",0.9996],PARAMETER[\"false_easting\",500000],PARAMETER[\"false_northing\",100)TECDICT"
    R"TECDICT(00000],PARAMETER[\"false_northing\",0],UNIT[\"metre\",1,AUTHORITY[\"EPSG\",\"9001\"]],AXIS[\"Eas)TECDICT"
    R"TECDICT(ting\",EAST],AXIS[\"Northing\",NORTH],AUTHORITY[\"EPSG\",\"32632\"]]","geotransform":[600000.0,1)TECDICT"
    R"TECDICT(0.0,0.0,5000000.0,0.0,-10.0],"tiles_x":1,"tiles_y":1,"dates":[null],"levels":1,"keyframe_interva)TECDICT"
    R"TECDICT(l":null,"model":{"name":"tec-hp-v1","sha256":"b0b0e93c9cbea97ef442665b8bb99253ab9d56a8d485eb94db)TECDICT"
    R"TECDICT(1a829f49796836"},"quality":5,"stats":{"fallback_tiles":1,"lossless_tiles":0,"learned_tiles":0,"c)TECDICT"
    R"TECDICT(oarse_grid_tiles":1,"floor_tiles":0,"compression_ratio":100.0},"metadata":{},"created_by":"terra)TECDICT"
    R"TECDICT(codec 0.1.0"})TECDICT";

constexpr size_t kMaxHeaderSize = 64 * 1024 * 1024;
constexpr int kIndexEntrySize = 24;
constexpr int kMaxBands = 13;

// ---- little helpers ---------------------------------------------------------------------------
uint32_t CRC32(const GByte *p, size_t n, uint32_t crc = 0)
{
    // zlib / PNG CRC-32 (reflected polynomial 0xEDB88320), table built on first use.
    static uint32_t table[256];
    static std::once_flag once;
    std::call_once(once,
                   []()
                   {
                       for (uint32_t i = 0; i < 256; ++i)
                       {
                           uint32_t c = i;
                           for (int k = 0; k < 8; ++k)
                               c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
                           table[i] = c;
                       }
                   });
    crc = ~crc;
    for (size_t i = 0; i < n; ++i)
        crc = table[(crc ^ p[i]) & 0xff] ^ (crc >> 8);
    return ~crc;
}

template <class T> T ReadLE(const GByte *p)
{
    T v;
    memcpy(&v, p, sizeof(T));
#if CPL_IS_LSB == 0
    std::reverse(reinterpret_cast<GByte *>(&v), reinterpret_cast<GByte *>(&v) + sizeof(T));
#endif
    return v;
}

GDALDataType DataTypeFromName(const std::string &s)
{
    if (s == "uint8")
        return GDT_Byte;
    if (s == "int16")
        return GDT_Int16;
    if (s == "uint16")
        return GDT_UInt16;
    return GDT_Unknown;
}

const char *DataTypeName(GDALDataType e)
{
    switch (e)
    {
        case GDT_Byte:
            return "uint8";
        case GDT_Int16:
            return "int16";
        case GDT_UInt16:
            return "uint16";
        default:
            return nullptr;
    }
}

bool IsInt(const CPLJSONObject &o)
{
    return o.GetType() == CPLJSONObject::Type::Integer || o.GetType() == CPLJSONObject::Type::Long;
}

bool IsNumber(const CPLJSONObject &o)
{
    return IsInt(o) || o.GetType() == CPLJSONObject::Type::Double;
}

struct TileEntry
{
    uint64_t nOffset;
    uint32_t nLength;
    uint32_t nCRC;
    uint16_t nKind;
    bool bBare;  // format 2: stored without the common tile header fields the file already holds
};

// LEB128 unsigned integer of at most 32 bits at abyBuf[nPos]; advances nPos, false if malformed.
bool ReadLEB128(const std::vector<GByte> &abyBuf, size_t &nPos, uint32_t &nValue)
{
    uint64_t v = 0;
    for (int nShift = 0; nShift < 35; nShift += 7)
    {
        if (nPos >= abyBuf.size())
            return false;
        const GByte b = abyBuf[nPos++];
        v |= static_cast<uint64_t>(b & 0x7f) << nShift;
        if (!(b & 0x80))
        {
            if (v > 0xffffffffu)
                return false;
            nValue = static_cast<uint32_t>(v);
            return true;
        }
    }
    return false;
}

// The full payload (with its CRC32) of a bare tile (docs/FORMAT.md, "Bare tiles"): the common
// header's magic, kind, dtype code, band count, height, width and nodata come from the file.
bool ExpandBareTile(const std::vector<GByte> &abyStored, int nKind, int nDTypeCode, int nBands,
                    int nH, int nW, bool bHaveNoData, double dfNoData, std::vector<GByte> &abyOut)
{
    if (abyStored.size() < 2)
        return false;
    const GByte nParam = abyStored[0], nMode = abyStored[1];
    size_t nPos = 2;
    uint32_t nMaskLen = 0;
    if (nMode != 0 && (!ReadLEB128(abyStored, nPos, nMaskLen) || nPos + nMaskLen > abyStored.size()))
        return false;
    const double dfValue = bHaveNoData ? dfNoData : std::numeric_limits<double>::quiet_NaN();
    abyOut.assign({'T', 'E', 'C', 'T', static_cast<GByte>(nKind), static_cast<GByte>(nDTypeCode),
                   static_cast<GByte>(nBands), nParam, static_cast<GByte>(nH & 0xff),
                   static_cast<GByte>(nH >> 8), static_cast<GByte>(nW & 0xff),
                   static_cast<GByte>(nW >> 8), nMode});
    GByte abyValue[8];
    memcpy(abyValue, &dfValue, 8);
#if CPL_IS_LSB == 0
    std::reverse(abyValue, abyValue + 8);
#endif
    abyOut.insert(abyOut.end(), abyValue, abyValue + 8);
    for (int k = 0; k < 4; ++k)
        abyOut.push_back(static_cast<GByte>(nMaskLen >> (8 * k)));
    abyOut.insert(abyOut.end(), abyStored.begin() + nPos, abyStored.end());
    const uint32_t nCRC = CRC32(abyOut.data(), abyOut.size());
    for (int k = 0; k < 4; ++k)
        abyOut.push_back(static_cast<GByte>(nCRC >> (8 * k)));
    return true;
}

}  // namespace

class TECRasterBand;

// ================================================================================================
class TECDataset final : public GDALPamDataset
{
    friend class TECRasterBand;

    // Shared by a base dataset and its overview datasets (they read tiles from the base).
    VSILFILE *m_fp = nullptr;
    std::mutex m_oFileMutex;
    std::string m_osModel;
    std::string m_osDType;
    GDALDataType m_eDT = GDT_Unknown;
    int m_nTileSize = 0;
    int m_nTilesX = 0;
    int m_nTilesY = 0;
    std::vector<TileEntry> m_aoIndex;
    bool m_bHaveGT = false;
    double m_adfGT[6] = {0, 1, 0, 0, 0, 1};
    OGRSpatialReference m_oSRS;
    bool m_bHaveNoData = false;
    double m_dfNoData = 0;
    std::string m_osPath;         // the .tec file (for the Python window reader)
    int m_nDate = 0;              // 0-based date index served by this dataset
    std::string m_osDateLabel;    // that date as in the header (or its index), for messages
    bool m_bWindowDecode = false; // blocks via gdal_bridge.read_window, not tile by tile

    int m_nLevel = 0;                   // overview level: 1/2**level resolution (0 = full)
    TECDataset *m_poBase = nullptr;     // full-resolution dataset of an overview
    std::vector<std::unique_ptr<TECDataset>> m_apoOverviews;

    bool ReadTile(int nTX, int nTY, std::vector<GByte> &abyOut);
    bool ReadWindow(int nXOff, int nYOff, int nW, int nH, int nLevel, std::vector<GByte> &abyOut);
    static GDALDataset *OpenFile(GDALOpenInfo *poOpenInfo, const char *pszDateSpec);
    static GDALDataset *OpenSubdataset(GDALOpenInfo *poOpenInfo);
    bool DecodeBlockAllBands(int nBX, int nBY, int nW, int nH, std::vector<GByte> &abyOut);
    CPLErr ReadBlock(int nBand, int nBX, int nBY, void *pImage);
    void BuildOverviews();

  public:
    TECDataset() = default;
    ~TECDataset() override;

    CPLErr GetGeoTransform(double *padfGT) override;
    const OGRSpatialReference *GetSpatialRef() const override;

    static int Identify(GDALOpenInfo *poOpenInfo);
    static GDALDataset *Open(GDALOpenInfo *poOpenInfo);
    static GDALDataset *CreateCopy(const char *pszFilename, GDALDataset *poSrcDS, int bStrict,
                                   char **papszOptions, GDALProgressFunc pfnProgress,
                                   void *pProgressData);
};

// ================================================================================================
class TECRasterBand final : public GDALPamRasterBand
{
    friend class TECDataset;

  public:
    TECRasterBand(TECDataset *poDS, int nBand);

    CPLErr IReadBlock(int nBX, int nBY, void *pImage) override;
    double GetNoDataValue(int *pbSuccess) override;
    GDALColorInterp GetColorInterpretation() override { return GCI_Undefined; }
    int GetOverviewCount() override;
    GDALRasterBand *GetOverview(int i) override;
};

TECRasterBand::TECRasterBand(TECDataset *poDSIn, int nBandIn)
{
    poDS = poDSIn;
    nBand = nBandIn;
    eDataType = poDSIn->m_eDT;
    nBlockXSize = poDSIn->m_nTileSize;
    nBlockYSize = poDSIn->m_nTileSize;
    nRasterXSize = poDSIn->GetRasterXSize();
    nRasterYSize = poDSIn->GetRasterYSize();
}

CPLErr TECRasterBand::IReadBlock(int nBX, int nBY, void *pImage)
{
    return static_cast<TECDataset *>(poDS)->ReadBlock(nBand, nBX, nBY, pImage);
}

double TECRasterBand::GetNoDataValue(int *pbSuccess)
{
    auto *ds = static_cast<TECDataset *>(poDS);
    if (ds->m_bHaveNoData)
    {
        if (pbSuccess)
            *pbSuccess = TRUE;
        return ds->m_dfNoData;
    }
    return GDALPamRasterBand::GetNoDataValue(pbSuccess);
}

int TECRasterBand::GetOverviewCount()
{
    // External overviews (.ovr made with gdaladdo -ro) win over the driver's own ones.
    const int nExternal = GDALPamRasterBand::GetOverviewCount();
    if (nExternal > 0)
        return nExternal;
    return static_cast<int>(static_cast<TECDataset *>(poDS)->m_apoOverviews.size());
}

GDALRasterBand *TECRasterBand::GetOverview(int i)
{
    if (GDALPamRasterBand::GetOverviewCount() > 0)
        return GDALPamRasterBand::GetOverview(i);
    auto *ds = static_cast<TECDataset *>(poDS);
    if (i < 0 || i >= static_cast<int>(ds->m_apoOverviews.size()))
        return nullptr;
    return ds->m_apoOverviews[i]->GetRasterBand(nBand);
}

// ================================================================================================
TECDataset::~TECDataset()
{
    if (!m_poBase)
        GDALPamDataset::FlushCache(true);
    m_apoOverviews.clear();
    if (m_fp)
        VSIFCloseL(m_fp);
}

CPLErr TECDataset::GetGeoTransform(double *padfGT)
{
    if (m_bHaveGT)
    {
        memcpy(padfGT, m_adfGT, sizeof(m_adfGT));
        return CE_None;
    }
    return m_poBase ? CE_Failure : GDALPamDataset::GetGeoTransform(padfGT);
}

const OGRSpatialReference *TECDataset::GetSpatialRef() const
{
    if (!m_oSRS.IsEmpty())
        return &m_oSRS;
    return m_poBase ? nullptr : GDALPamDataset::GetSpatialRef();
}

int TECDataset::Identify(GDALOpenInfo *poOpenInfo)
{
    // Magic only (GDAL calls Identify for every file it opens): never starts Python.
    if (STARTS_WITH_CI(poOpenInfo->pszFilename, "TEC:"))
        return TRUE;  // subdataset name TEC:"x.tec":<date>
    return poOpenInfo->nHeaderBytes >= static_cast<int>(sizeof(kMagic)) &&
           memcmp(poOpenInfo->pabyHeader, kMagic, sizeof(kMagic)) == 0;
}

// Read one full-resolution tile (all bands, band-sequential, cropped edge size) and decode it.
bool TECDataset::ReadTile(int nTX, int nTY, std::vector<GByte> &abyOut)
{
    TECDataset *base = m_poBase ? m_poBase : this;
    const int T = base->m_nTileSize;
    const int nW = std::min(T, base->nRasterXSize - nTX * T);
    const int nH = std::min(T, base->nRasterYSize - nTY * T);
    if (base->m_bWindowDecode)
        return ReadWindow(nTX * T, nTY * T, nW, nH, 0, abyOut);
    const size_t iTile = static_cast<size_t>(nTY) * base->m_nTilesX + nTX;  // date 0, level 0
    const TileEntry &e = base->m_aoIndex[iTile];
    const char *pszName = CPLGetFilename(base->m_osPath.c_str());

    std::vector<GByte> abyPayload;
    try
    {
        abyPayload.resize(e.nLength);
    }
    catch (const std::bad_alloc &)
    {
        CPLError(CE_Failure, CPLE_OutOfMemory, "TEC: %s: tile (%d,%d): out of memory", pszName,
                 nTX, nTY);
        return false;
    }
    {
        std::lock_guard<std::mutex> lock(base->m_oFileMutex);
        if (VSIFSeekL(base->m_fp, e.nOffset, SEEK_SET) != 0 ||
            VSIFReadL(abyPayload.data(), 1, e.nLength, base->m_fp) != e.nLength)
        {
            CPLError(CE_Failure, CPLE_FileIO, "TEC: %s: tile (%d,%d): cannot read %u bytes at %llu",
                     pszName, nTX, nTY, e.nLength, static_cast<unsigned long long>(e.nOffset));
            return false;
        }
    }
    if (CRC32(abyPayload.data(), abyPayload.size()) != e.nCRC)
    {
        CPLError(CE_Failure, CPLE_AppDefined,
                 "TEC: %s: tile (%d,%d) [index %lu]: payload CRC32 mismatch (corrupt file)",
                 pszName, nTX, nTY, static_cast<unsigned long>(iTile));
        return false;
    }
    if (e.bBare)
    {
        std::vector<GByte> abyFull;
        const int nCode = base->m_eDT == GDT_Byte ? 1 : base->m_eDT == GDT_Int16 ? 2 : 3;
        if (!ExpandBareTile(abyPayload, e.nKind, nCode, base->nBands, nH, nW, base->m_bHaveNoData,
                            base->m_dfNoData, abyFull))
        {
            CPLError(CE_Failure, CPLE_AppDefined,
                     "TEC: %s: tile (%d,%d) [index %lu]: bare tile payload truncated", pszName, nTX,
                     nTY, static_cast<unsigned long>(iTile));
            return false;
        }
        abyPayload.swap(abyFull);
    }
    const int nDTSize = GDALGetDataTypeSizeBytes(base->m_eDT);
    const size_t nBytes = static_cast<size_t>(base->nBands) * nW * nH * nDTSize;
    abyOut.resize(nBytes);
    std::string osErr;
    if (!tec::PyDecodeTile(abyPayload.data(), abyPayload.size(), base->m_osModel, base->nBands,
                           nH, nW, base->m_osDType, abyOut.data(), nBytes, osErr))
    {
        CPLError(CE_Failure, CPLE_AppDefined, "TEC: %s: tile (%d,%d) [index %lu]: %s", pszName,
                 nTX, nTY, static_cast<unsigned long>(iTile), osErr.c_str());
        return false;
    }
#if CPL_IS_LSB == 0
    GDALSwapWords(abyOut.data(), nDTSize, static_cast<int>(nBytes / nDTSize), nDTSize);
#endif
    return true;
}

// The pixels of window (nXOff, nYOff, nW, nH) of overview level nLevel (0 = full resolution) of
// the served date, all bands, band-sequential, decoded by the Python package (see the file comment).
bool TECDataset::ReadWindow(int nXOff, int nYOff, int nW, int nH, int nLevel,
                            std::vector<GByte> &abyOut)
{
    TECDataset *base = m_poBase ? m_poBase : this;
    const char *pszName = CPLGetFilename(base->m_osPath.c_str());
    std::string osWhere = CPLSPrintf("TEC: %s: ", pszName);
    if (!base->m_osDateLabel.empty())
        osWhere += CPLSPrintf("date %s, ", base->m_osDateLabel.c_str());
    if (nLevel)
        osWhere += CPLSPrintf("overview 1/%d, ", 1 << nLevel);
    osWhere += CPLSPrintf("window x=%d y=%d %dx%d", nXOff, nYOff, nW, nH);
    const int nDTSize = GDALGetDataTypeSizeBytes(base->m_eDT);
    const size_t nBytes = static_cast<size_t>(base->nBands) * nW * nH * nDTSize;
    try
    {
        abyOut.resize(nBytes);
    }
    catch (const std::bad_alloc &)
    {
        CPLError(CE_Failure, CPLE_OutOfMemory, "%s: out of memory", osWhere.c_str());
        return false;
    }
    std::string osErr;
    if (!tec::PyReadWindow(base->m_osPath, base->m_nDate, nXOff, nYOff, nW, nH, nLevel,
                           abyOut.data(), nBytes, osErr))
    {
        CPLError(CE_Failure, CPLE_AppDefined, "%s: %s", osWhere.c_str(), osErr.c_str());
        return false;
    }
#if CPL_IS_LSB == 0
    GDALSwapWords(abyOut.data(), nDTSize, static_cast<int>(nBytes / nDTSize), nDTSize);
#endif
    return true;
}

// Pixels of block (nBX, nBY) of this (possibly overview) dataset for every band:
// band-sequential, nW x nH (the valid part of the block).
bool TECDataset::DecodeBlockAllBands(int nBX, int nBY, int nW, int nH, std::vector<GByte> &abyOut)
{
    if (m_nLevel == 0)
        return ReadTile(nBX, nBY, abyOut);
    CPLDebug("TEC", "overview 1/%d: block (%d,%d) decoded at reduced resolution", 1 << m_nLevel,
             nBX, nBY);
    const int T = m_poBase->m_nTileSize;
    return ReadWindow(nBX * T, nBY * T, nW, nH, m_nLevel, abyOut);
}

CPLErr TECDataset::ReadBlock(int nBand, int nBX, int nBY, void *pImage)
{
    const int T = m_nTileSize;
    const int nW = std::min(T, nRasterXSize - nBX * T);
    const int nH = std::min(T, nRasterYSize - nBY * T);
    const int nDTSize = GDALGetDataTypeSizeBytes(m_eDT);
    std::vector<GByte> abyAll;
    if (!DecodeBlockAllBands(nBX, nBY, nW, nH, abyAll))
        return CE_Failure;

    auto fill = [&](int b, void *pDst)
    {
        GByte *dst = static_cast<GByte *>(pDst);
        const GByte *src = abyAll.data() + static_cast<size_t>(b - 1) * nW * nH * nDTSize;
        if (nW != T || nH != T)
            memset(dst, 0, static_cast<size_t>(T) * T * nDTSize);
        for (int j = 0; j < nH; ++j)
            memcpy(dst + static_cast<size_t>(j) * T * nDTSize,
                   src + static_cast<size_t>(j) * nW * nDTSize, static_cast<size_t>(nW) * nDTSize);
    };
    fill(nBand, pImage);
    // The tile held every band: put the other bands into the block cache too, so that reading
    // band 2..N of this block does not decode the tile again.
    for (int b = 1; b <= nBands; ++b)
    {
        if (b == nBand)
            continue;
        GDALRasterBand *poOther = GetRasterBand(b);
        GDALRasterBlock *poBlock = poOther->TryGetLockedBlockRef(nBX, nBY);
        if (poBlock)
        {
            poBlock->DropLock();
            continue;
        }
        poBlock = poOther->GetLockedBlockRef(nBX, nBY, TRUE);
        if (!poBlock)
            continue;
        fill(b, poBlock->GetDataRef());
        poBlock->DropLock();
    }
    return CE_None;
}

void TECDataset::BuildOverviews()
{
    // Power-of-two levels until the overview fits in one tile.
    if (nBands == 0)
        return;  // time stack: the subdatasets have the bands
    for (int nLevel = 1;; ++nLevel)
    {
        const int f = 1 << nLevel;
        const int nW = (nRasterXSize + f - 1) / f;
        const int nH = (nRasterYSize + f - 1) / f;
        if (nW < 1 || nH < 1)
            break;
        const int nPrevW = (nRasterXSize + f / 2 - 1) / (f / 2);
        const int nPrevH = (nRasterYSize + f / 2 - 1) / (f / 2);
        if (std::max(nPrevW, nPrevH) <= m_nTileSize)
            break;
        auto poOv = std::make_unique<TECDataset>();
        poOv->m_poBase = this;
        poOv->m_nLevel = nLevel;
        poOv->nRasterXSize = nW;
        poOv->nRasterYSize = nH;
        poOv->m_eDT = m_eDT;
        poOv->m_osDType = m_osDType;
        poOv->m_nTileSize = m_nTileSize;
        poOv->m_bHaveNoData = m_bHaveNoData;
        poOv->m_dfNoData = m_dfNoData;
        poOv->nPamFlags |= GPF_DISABLED;
        poOv->eAccess = GA_ReadOnly;
        for (int b = 1; b <= nBands; ++b)
            poOv->SetBand(b, new TECRasterBand(poOv.get(), b));
        m_apoOverviews.push_back(std::move(poOv));
    }
}

namespace
{

// "x.tec" -> "/current/dir/x.tec" (GDAL virtual paths and absolute paths unchanged).
std::string AbsolutePath(const char *pszPath)
{
    if (STARTS_WITH(pszPath, "/vsi") || !CPLIsFilenameRelative(pszPath))
        return pszPath;
    char *pszCwd = CPLGetCurrentDir();
    std::string osAbs = pszCwd ? CPLFormFilename(pszCwd, pszPath, nullptr) : pszPath;
    CPLFree(pszCwd);
    return osAbs;
}

// Position of `osSpec` in the header's dates: the date string itself, a bare YYYY-MM-DD that
// matches the day of exactly one date-time, or a 0-based index. -1 (with a CPLError) otherwise.
int MatchDate(const std::vector<std::string> &aosDates, const std::string &osSpec,
              const char *pszName)
{
    const int nDates = static_cast<int>(aosDates.size());
    for (int i = 0; i < nDates; ++i)
        if (!aosDates[i].empty() && aosDates[i] == osSpec)
            return i;
    if (!osSpec.empty() && osSpec.size() <= 9 &&
        osSpec.find_first_not_of("0123456789") == std::string::npos)
    {
        const int i = atoi(osSpec.c_str());
        if (i < nDates)
            return i;
    }
    else if (osSpec.size() == 10)
    {
        int nHit = -1, nHits = 0;
        for (int i = 0; i < nDates; ++i)
            if (aosDates[i].compare(0, 10, osSpec) == 0)
            {
                nHit = i;
                ++nHits;
            }
        if (nHits == 1)
            return nHit;
        if (nHits > 1)
        {
            CPLError(CE_Failure, CPLE_OpenFailed,
                     "TEC: %s: date '%s' matches %d date-times of the file; name one exactly",
                     pszName, osSpec.c_str(), nHits);
            return -1;
        }
    }
    std::string osList;
    for (int i = 0; i < nDates; ++i)
        osList += (i ? ", " : "") + (aosDates[i].empty() ? std::string("(none)") : aosDates[i]);
    CPLError(CE_Failure, CPLE_OpenFailed,
             "TEC: %s: date '%s' is not in this file; its dates are %s (or use a 0-based index "
             "0..%d)",
             pszName, osSpec.c_str(), osList.c_str(), nDates - 1);
    return -1;
}

}  // namespace

GDALDataset *TECDataset::Open(GDALOpenInfo *poOpenInfo)
{
    if (STARTS_WITH_CI(poOpenInfo->pszFilename, "TEC:"))
        return OpenSubdataset(poOpenInfo);
    if (!Identify(poOpenInfo) || poOpenInfo->fpL == nullptr)
        return nullptr;
    return OpenFile(poOpenInfo, nullptr);
}

// TEC:"/path/x.tec":<date>; unquoted (as rasterio lists them), the path is the first prefix
// before a ':' that exists. Date: as in the header, the YYYY-MM-DD of a date-time, or an index.
GDALDataset *TECDataset::OpenSubdataset(GDALOpenInfo *poOpenInfo)
{
    const std::string osName = poOpenInfo->pszFilename;
    const std::string osRest = osName.substr(4);
    std::string osPath, osSpec;
    bool bOK = false;
    if (!osRest.empty() && osRest[0] == '"')
    {
        const size_t nQuote = osRest.find('"', 1);
        if (nQuote != std::string::npos && nQuote + 1 < osRest.size() && osRest[nQuote + 1] == ':')
        {
            osPath = osRest.substr(1, nQuote - 1);
            osSpec = osRest.substr(nQuote + 2);
            bOK = true;
        }
    }
    else
    {
        // Unquoted: the first ':' after which the prefix is an existing file (dates may hold ':').
        VSIStatBufL sStat;
        for (size_t nColon = osRest.find(':'); nColon != std::string::npos;
             nColon = osRest.find(':', nColon + 1))
        {
            if (VSIStatL(osRest.substr(0, nColon).c_str(), &sStat) == 0)
            {
                osPath = osRest.substr(0, nColon);
                osSpec = osRest.substr(nColon + 1);
                bOK = true;
                break;
            }
        }
    }
    if (!bOK || osPath.empty() || osSpec.empty())
    {
        CPLError(CE_Failure, CPLE_OpenFailed,
                 "TEC: bad subdataset name '%s'; expected TEC:\"file.tec\":DATE (the date as "
                 "listed in the SUBDATASETS metadata, or a 0-based date index)",
                 osName.c_str());
        return nullptr;
    }
    if (poOpenInfo->eAccess == GA_Update)
    {
        CPLError(CE_Failure, CPLE_NotSupported,
                 "TEC: %s: the TEC driver does not support update access", osName.c_str());
        return nullptr;
    }
    GDALOpenInfo oInfo(osPath.c_str(), GA_ReadOnly);
    if (oInfo.fpL == nullptr || !Identify(&oInfo))
    {
        CPLError(CE_Failure, CPLE_OpenFailed, "TEC: %s: %s", osPath.c_str(),
                 oInfo.fpL == nullptr ? "cannot open the file" : "not a .tec file");
        return nullptr;
    }
    GDALDataset *poDS = OpenFile(&oInfo, osSpec.c_str());
    if (poDS)
        poDS->SetDescription(osName.c_str());
    return poDS;
}

// Open a .tec file: the whole file (pszDateSpec null; a time stack then lists its dates as
// subdatasets) or one date of it.
GDALDataset *TECDataset::OpenFile(GDALOpenInfo *poOpenInfo, const char *pszDateSpec)
{
    const char *pszName = CPLGetFilename(poOpenInfo->pszFilename);
    if (poOpenInfo->eAccess == GA_Update)
    {
        CPLError(CE_Failure, CPLE_NotSupported,
                 "TEC: %s: the TEC driver does not support update access to existing files "
                 "(use CreateCopy; for gdaladdo use -ro to build external overviews)",
                 pszName);
        return nullptr;
    }
    if (poOpenInfo->nHeaderBytes < kPrefix2Size)
    {
        CPLError(CE_Failure, CPLE_FileIO, "TEC: %s: file truncated (%d bytes)", pszName,
                 poOpenInfo->nHeaderBytes);
        return nullptr;
    }
    const GByte *p = poOpenInfo->pabyHeader;
    const uint16_t nMajor = ReadLE<uint16_t>(p + 8);
    const uint16_t nMinor = ReadLE<uint16_t>(p + 10);
    if (nMajor != 1 && nMajor != 2)
    {
        CPLError(CE_Failure, CPLE_NotSupported,
                 "TEC: %s: format version %u.%u is not supported (this driver reads 1.x and 2.x)",
                 pszName, nMajor, nMinor);
        return nullptr;
    }
    VSILFILE *fp = poOpenInfo->fpL;
    if (VSIFSeekL(fp, 0, SEEK_END) != 0)
        return nullptr;
    const uint64_t nFileSize = VSIFTellL(fp);
    uint32_t nFlags = 0, nHeaderLen = 0, nIndexCount = 0;
    uint64_t nPayloadEnd = 0;  // format 2: where the payloads end (the header starts)
    // raw header (+1 byte for a terminating zero) and raw index, CRC-checked
    std::vector<GByte> abyHeader, abyIndex;
    auto readRegion = [fp](uint64_t nOff, std::vector<GByte> &aby)
    {
        return VSIFSeekL(fp, nOff, SEEK_SET) == 0 &&
               VSIFReadL(aby.data(), 1, aby.size(), fp) == aby.size();
    };
    if (nMajor == 1)
    {
        if (poOpenInfo->nHeaderBytes < kPrefixSize)
        {
            CPLError(CE_Failure, CPLE_FileIO, "TEC: %s: file truncated (%d bytes, shorter than "
                     "the 64-byte prefix)", pszName, poOpenInfo->nHeaderBytes);
            return nullptr;
        }
        if (ReadLE<uint32_t>(p + 60) != CRC32(p, 60))
        {
            CPLError(CE_Failure, CPLE_AppDefined, "TEC: %s: prefix CRC32 mismatch (corrupt file)",
                     pszName);
            return nullptr;
        }
        nFlags = ReadLE<uint32_t>(p + 12);
        const uint64_t nHeaderOff = ReadLE<uint64_t>(p + 16);
        nHeaderLen = ReadLE<uint32_t>(p + 24);
        const uint32_t nHeaderCRC = ReadLE<uint32_t>(p + 28);
        const uint64_t nIndexOff = ReadLE<uint64_t>(p + 32);
        nIndexCount = ReadLE<uint32_t>(p + 40);
        const uint32_t nIndexCRC = ReadLE<uint32_t>(p + 44);
        const uint64_t nIndexBytes = static_cast<uint64_t>(nIndexCount) * kIndexEntrySize;
        // a region the format 1 prefix points to lies outside the file
        const auto outsideFile = [&](const std::string &osWhat)
        {
            CPLError(CE_Failure, CPLE_FileIO, "TEC: %s: file truncated or corrupt (%s; file is %llu bytes)",
                     pszName, osWhat.c_str(), static_cast<unsigned long long>(nFileSize));
        };
        if (nHeaderOff < kPrefixSize || nHeaderLen == 0 || nHeaderOff + nHeaderLen > nFileSize ||
            nHeaderLen > kMaxHeaderSize)
        {
            outsideFile(CPLSPrintf("header at %llu, %u bytes", static_cast<unsigned long long>(nHeaderOff),
                                   nHeaderLen));
            return nullptr;
        }
        if (nIndexOff < kPrefixSize || nIndexOff + nIndexBytes > nFileSize)
        {
            outsideFile(CPLSPrintf("tile index at %llu, %u entries", static_cast<unsigned long long>(nIndexOff),
                                   nIndexCount));
            return nullptr;
        }
        abyHeader.resize(nHeaderLen);
        if (!readRegion(nHeaderOff, abyHeader))
        {
            CPLError(CE_Failure, CPLE_FileIO, "TEC: %s: cannot read the header", pszName);
            return nullptr;
        }
        abyHeader.push_back(0);
        if (CRC32(abyHeader.data(), nHeaderLen) != nHeaderCRC)
        {
            CPLError(CE_Failure, CPLE_AppDefined, "TEC: %s: header CRC32 mismatch (corrupt file)",
                     pszName);
            return nullptr;
        }
        abyIndex.resize(static_cast<size_t>(nIndexBytes));
        if (!readRegion(nIndexOff, abyIndex))
        {
            CPLError(CE_Failure, CPLE_FileIO, "TEC: %s: cannot read the tile index", pszName);
            return nullptr;
        }
        if (CRC32(abyIndex.data(), abyIndex.size()) != nIndexCRC)
        {
            CPLError(CE_Failure, CPLE_AppDefined,
                     "TEC: %s: tile index CRC32 mismatch (corrupt file)", pszName);
            return nullptr;
        }
    }
    else
    {
        // format 2: [prefix][payloads][header][index][trailer]
        nFlags = p[12];
        std::vector<GByte> abyTrailer(kTrailer2Size);
        if (nFileSize < kPrefix2Size + kTrailer2Size ||
            !readRegion(nFileSize - kTrailer2Size, abyTrailer))
        {
            CPLError(CE_Failure, CPLE_FileIO, "TEC: %s: file truncated", pszName);
            return nullptr;
        }
        nHeaderLen = ReadLE<uint32_t>(abyTrailer.data());
        const uint32_t nIndexLen = ReadLE<uint32_t>(abyTrailer.data() + 4);
        const uint32_t nCRC = ReadLE<uint32_t>(abyTrailer.data() + 8);
        const uint64_t nTail = static_cast<uint64_t>(nHeaderLen) + nIndexLen + kTrailer2Size;
        if (nHeaderLen == 0 || nHeaderLen > kMaxHeaderSize || nTail + kPrefix2Size > nFileSize)
        {
            CPLError(CE_Failure, CPLE_FileIO,
                     "TEC: %s: file truncated or corrupt (the trailer gives a %u-byte header and a "
                     "%u-byte tile index in a %llu-byte file)",
                     pszName, nHeaderLen, nIndexLen, static_cast<unsigned long long>(nFileSize));
            return nullptr;
        }
        nPayloadEnd = nFileSize - nTail;
        abyHeader.resize(nHeaderLen);
        abyIndex.resize(nIndexLen);
        if (!readRegion(nPayloadEnd, abyHeader) || !readRegion(nPayloadEnd + nHeaderLen, abyIndex))
        {
            CPLError(CE_Failure, CPLE_FileIO, "TEC: %s: cannot read the header", pszName);
            return nullptr;
        }
        uint32_t nCheck = CRC32(p, kPrefix2Size);
        nCheck = CRC32(abyHeader.data(), abyHeader.size(), nCheck);
        nCheck = CRC32(abyIndex.data(), abyIndex.size(), nCheck);
        nCheck = CRC32(abyTrailer.data(), 8, nCheck);
        if (nCheck != nCRC)
        {
            CPLError(CE_Failure, CPLE_AppDefined,
                     "TEC: %s: prefix, header or tile index CRC32 mismatch (corrupt or truncated "
                     "file)", pszName);
            return nullptr;
        }
        abyHeader.push_back(0);
    }

    // ---- header --------------------------------------------------------------------------------
    size_t nJSONLen = nHeaderLen;
    const uint32_t nKnownFlags =
        kFlagHeaderDeflate | kFlagHeaderDictionary | (nMajor >= 2 ? kFlagHeaderRaw : 0);
    if ((nFlags & ~nKnownFlags) != 0 ||
        ((nFlags & (kFlagHeaderDictionary | kFlagHeaderRaw)) && !(nFlags & kFlagHeaderDeflate)))
    {
        CPLError(CE_Failure, CPLE_AppDefined, "TEC: %s: unknown prefix flags 0x%x (a newer format?)",
                 pszName, static_cast<unsigned>(nFlags));
        return nullptr;
    }
    if (nFlags & kFlagHeaderDeflate)
    {
        // zlib inflate, with the preset dictionary when flag bit 1 says so; the JSON of a header is
        // a few KB, a WKT-heavy one tens of KB, never more than kMaxHeaderSize
        std::vector<GByte> abyJSON(65536);
        z_stream zs;
        memset(&zs, 0, sizeof(zs));
        // a raw stream (flag bit 2) carries no dictionary request: the dictionary is set up front
        const bool bRaw = (nFlags & kFlagHeaderRaw) != 0;
        const bool bInit = (bRaw ? inflateInit2(&zs, -15) : inflateInit(&zs)) == Z_OK;
        bool bOK = bInit && !(bRaw && (nFlags & kFlagHeaderDictionary) &&
                              inflateSetDictionary(
                                  &zs, reinterpret_cast<const Bytef *>(kHeaderDictionary),
                                  static_cast<uInt>(sizeof(kHeaderDictionary) - 1)) != Z_OK);
        if (bInit && !bOK)
            inflateEnd(&zs);
        if (bOK)
        {
            zs.next_in = abyHeader.data();
            zs.avail_in = static_cast<uInt>(nHeaderLen);
            zs.next_out = abyJSON.data();
            zs.avail_out = static_cast<uInt>(abyJSON.size());
            int nRet = Z_OK;
            for (;;)
            {
                nRet = inflate(&zs, Z_NO_FLUSH);
                if (nRet == Z_NEED_DICT && (nFlags & kFlagHeaderDictionary) &&
                    inflateSetDictionary(&zs, reinterpret_cast<const Bytef *>(kHeaderDictionary),
                                         static_cast<uInt>(sizeof(kHeaderDictionary) - 1)) == Z_OK)
                    continue;
                if (nRet == Z_OK && zs.avail_out == 0 && abyJSON.size() <= kMaxHeaderSize)
                {   // grow the output (by 4x, up to one byte over the limit) and go on
                    const size_t nDone = zs.total_out;
                    abyJSON.resize(std::min(abyJSON.size() * 4, kMaxHeaderSize + 1));
                    zs.next_out = abyJSON.data() + nDone;
                    zs.avail_out = static_cast<uInt>(abyJSON.size() - nDone);
                    continue;
                }
                if (nRet != Z_OK)
                    break;                   // Z_STREAM_END, or an error / truncated input
            }
            bOK = bOK && nRet == Z_STREAM_END && zs.total_out <= kMaxHeaderSize;
            const size_t nOut = zs.total_out;
            inflateEnd(&zs);
            if (bOK)
            {
                abyJSON.resize(nOut + 1);
                abyJSON[nOut] = 0;
                abyHeader.swap(abyJSON);
                nJSONLen = nOut;
            }
        }
        if (!bOK)
        {
            CPLError(CE_Failure, CPLE_AppDefined, "TEC: %s: corrupt deflated header", pszName);
            return nullptr;
        }
    }
    CPLJSONDocument oDoc;
    {
        CPLErrorStateBackuper oBackuper;
        CPLPushErrorHandler(CPLQuietErrorHandler);
        const bool bOK = oDoc.LoadMemory(abyHeader.data(), static_cast<int>(nJSONLen));
        CPLPopErrorHandler();
        if (!bOK || oDoc.GetRoot().GetType() != CPLJSONObject::Type::Object)
        {
            CPLError(CE_Failure, CPLE_AppDefined, "TEC: %s: header is not a valid JSON object",
                     pszName);
            return nullptr;
        }
    }
    const CPLJSONObject oRoot = oDoc.GetRoot();
    auto bad = [pszName](const char *what)
    {
        CPLError(CE_Failure, CPLE_AppDefined, "TEC: %s: invalid header: %s", pszName, what);
        return nullptr;
    };
    for (const char *key : {"width", "height", "count", "tile_size", "tiles_x", "tiles_y"})
        if (!IsInt(oRoot.GetObj(key)))
            return bad(CPLSPrintf("'%s' missing or not an integer", key));
    const GInt64 nWidth = oRoot.GetLong("width"), nHeight = oRoot.GetLong("height");
    const GInt64 nCount = oRoot.GetLong("count"), nTile = oRoot.GetLong("tile_size");
    if (nWidth < 1 || nHeight < 1 || nWidth > INT_MAX || nHeight > INT_MAX)
        return bad("bad width/height");
    if (nCount < 1 || nCount > kMaxBands)
        return bad("count must be 1..13");
    if (nTile < 1 || nTile > 65535)
        return bad("bad tile_size");
    const GInt64 nTilesX = (nWidth + nTile - 1) / nTile, nTilesY = (nHeight + nTile - 1) / nTile;
    if (oRoot.GetLong("tiles_x") != nTilesX || oRoot.GetLong("tiles_y") != nTilesY)
        return bad("tiles_x/tiles_y do not match width/height/tile_size");
    const std::string osDType = oRoot.GetString("dtype");
    const GDALDataType eDT = DataTypeFromName(osDType);
    if (eDT == GDT_Unknown)
        return bad(CPLSPrintf("unsupported dtype '%s'", osDType.c_str()));
    const CPLJSONArray oBands = oRoot.GetArray("bands");
    if (!oBands.IsValid() || oBands.Size() != nCount)
        return bad("'bands' must list one name per band");
    GInt64 nDates = 1, nLevels = 1;
    std::vector<std::string> aosDates;  // "" = no date
    if (oRoot.GetObj("dates").GetType() == CPLJSONObject::Type::Array)
    {
        for (const auto &oDate : oRoot.GetArray("dates"))
            aosDates.push_back(oDate.GetType() == CPLJSONObject::Type::String ? oDate.ToString()
                                                                            : std::string());
        nDates = std::max<GInt64>(1, static_cast<GInt64>(aosDates.size()));
    }
    aosDates.resize(static_cast<size_t>(nDates));
    GInt64 nOverlap = 0;
    if (IsInt(oRoot.GetObj("tile_overlap")))
        nOverlap = oRoot.GetLong("tile_overlap");
    if (nOverlap < 0 || nOverlap > nTile / 4)
        return bad("tile_overlap must be 0..tile_size/4");
    int nDate = 0;
    if (pszDateSpec)
    {
        nDate = MatchDate(aosDates, pszDateSpec, pszName);
        if (nDate < 0)
            return nullptr;
    }
    const bool bStackParent = pszDateSpec == nullptr && nDates >= 2;
    if (IsInt(oRoot.GetObj("levels")))
        nLevels = oRoot.GetLong("levels");
    if (nLevels < 1)
        return bad("levels must be >= 1");
    const GInt64 nWantEntries = nDates * nLevels * nTilesX * nTilesY;
    if (nMajor == 1 && static_cast<GInt64>(nIndexCount) != nWantEntries)
        return bad(CPLSPrintf("index has %u entries, expected %lld", nIndexCount,
                              static_cast<long long>(nWantEntries)));
    if (nWantEntries > static_cast<GInt64>(abyIndex.size()))   // format 2: >= 6 bytes an entry
        return bad("the tile index is shorter than the grid needs");

    // ---- tile index ------------------------------------------------------------------------------
    auto poDS = std::make_unique<TECDataset>();
    poDS->m_aoIndex.resize(static_cast<size_t>(nWantEntries));
    size_t nPos = 0;
    uint64_t nNext = kPrefix2Size;  // format 2: payloads follow each other from the prefix on
    for (size_t i = 0; i < poDS->m_aoIndex.size(); ++i)
    {
        TileEntry &t = poDS->m_aoIndex[i];
        if (nMajor == 1)
        {
            const GByte *e = abyIndex.data() + i * kIndexEntrySize;
            t.nOffset = ReadLE<uint64_t>(e);
            t.nLength = ReadLE<uint32_t>(e + 8);
            t.nCRC = ReadLE<uint32_t>(e + 12);
            t.nKind = ReadLE<uint16_t>(e + 16);
            t.bBare = false;
            if (t.nOffset < kPrefixSize || t.nOffset + t.nLength > nFileSize)
            {
                CPLError(CE_Failure, CPLE_FileIO,
                         "TEC: %s: file truncated (tile %lu lies beyond the end of the file)",
                         pszName, static_cast<unsigned long>(i));
                return nullptr;
            }
            continue;
        }
        if (nPos >= abyIndex.size())
            return bad("corrupt tile index (fewer entries than the grid needs)");
        const GByte nKind = abyIndex[nPos++];
        if (!ReadLEB128(abyIndex, nPos, t.nLength) || nPos + 4 > abyIndex.size())
            return bad("corrupt tile index");
        t.nCRC = ReadLE<uint32_t>(abyIndex.data() + nPos);
        nPos += 4;
        t.nKind = nKind & ~kBareKind;
        t.bBare = (nKind & kBareKind) != 0;
        t.nOffset = nNext;
        nNext += t.nLength;
    }
    if (nMajor == 2 && (nPos != abyIndex.size() || nNext != nPayloadEnd))
        return bad("corrupt tile index (its entries do not cover the payloads)");

    // ---- dataset -----------------------------------------------------------------------------------
    poDS->nRasterXSize = static_cast<int>(nWidth);
    poDS->nRasterYSize = static_cast<int>(nHeight);
    poDS->eAccess = GA_ReadOnly;
    poDS->m_eDT = eDT;
    poDS->m_osDType = osDType;
    poDS->m_nTileSize = static_cast<int>(nTile);
    poDS->m_nTilesX = static_cast<int>(nTilesX);
    poDS->m_nTilesY = static_cast<int>(nTilesY);
    const CPLJSONObject oModel = oRoot.GetObj("model");
    poDS->m_osModel = oModel.GetType() == CPLJSONObject::Type::Object ? oModel.GetString("name")
                                                                      : std::string();
    const std::string osAbsPath = AbsolutePath(poOpenInfo->pszFilename);
    poDS->m_osPath = osAbsPath;
    poDS->m_nDate = nDate;
    if (pszDateSpec || nDates >= 2)
        poDS->m_osDateLabel =
            aosDates[nDate].empty() ? CPLSPrintf("%d", nDate) : aosDates[nDate];
    poDS->m_bWindowDecode = nDates >= 2 || nOverlap > 0;

    const CPLJSONObject oGT = oRoot.GetObj("geotransform");
    if (oGT.GetType() == CPLJSONObject::Type::Array)
    {
        const CPLJSONArray aGT = oRoot.GetArray("geotransform");
        if (aGT.Size() != 6)
            return bad("geotransform must have 6 numbers");
        for (int i = 0; i < 6; ++i)
        {
            if (!IsNumber(aGT[i]))
                return bad("geotransform must have 6 numbers");
            poDS->m_adfGT[i] = aGT[i].ToDouble();
        }
        poDS->m_bHaveGT = true;
    }
    const CPLJSONObject oWKT = oRoot.GetObj("crs_wkt");
    if (oWKT.GetType() == CPLJSONObject::Type::String && !oWKT.ToString().empty())
    {
        poDS->m_oSRS.SetAxisMappingStrategy(OAMS_TRADITIONAL_GIS_ORDER);
        if (poDS->m_oSRS.importFromWkt(oWKT.ToString().c_str()) != OGRERR_NONE)
        {
            CPLError(CE_Warning, CPLE_AppDefined, "TEC: %s: cannot parse crs_wkt; CRS ignored",
                     pszName);
            poDS->m_oSRS.Clear();
        }
    }
    const CPLJSONObject oNoData = oRoot.GetObj("nodata");
    if (IsNumber(oNoData))
    {
        poDS->m_bHaveNoData = true;
        poDS->m_dfNoData = oNoData.ToDouble();
    }

    // Metadata (set through GDALMajorObject so that PAM does not write an .aux.xml for it).
    const CPLJSONObject oMeta = oRoot.GetObj("metadata");
    if (oMeta.GetType() == CPLJSONObject::Type::Object)
        for (const auto &oItem : oMeta.GetChildren())
            poDS->GDALMajorObject::SetMetadataItem(oItem.GetName().c_str(),
                                                   oItem.ToString().c_str());
    poDS->GDALMajorObject::SetMetadataItem("COMPRESSION", "TEC", "IMAGE_STRUCTURE");
    poDS->GDALMajorObject::SetMetadataItem("INTERLEAVE", "PIXEL", "IMAGE_STRUCTURE");
    poDS->GDALMajorObject::SetMetadataItem("FORMAT_VERSION", CPLSPrintf("%u.%u", nMajor, nMinor),
                                           "TEC");
    if (oModel.GetType() == CPLJSONObject::Type::Object)
    {
        poDS->GDALMajorObject::SetMetadataItem("MODEL", oModel.GetString("name").c_str(), "TEC");
        poDS->GDALMajorObject::SetMetadataItem("MODEL_SHA256", oModel.GetString("sha256").c_str(),
                                               "TEC");
    }
    if (IsInt(oRoot.GetObj("quality")))
        poDS->GDALMajorObject::SetMetadataItem(
            "QUALITY", CPLSPrintf("%d", oRoot.GetInteger("quality")), "TEC");
    const CPLJSONObject oStats = oRoot.GetObj("stats");
    if (oStats.GetType() == CPLJSONObject::Type::Object)
    {
        // format 1 headers hold the ratio; format 2 readers measure it on the file
        const double dfRatio =
            IsNumber(oStats.GetObj("compression_ratio"))
                ? oStats.GetDouble("compression_ratio")
                : static_cast<double>(nDates) * nCount * nWidth * nHeight *
                      GDALGetDataTypeSizeBytes(eDT) / static_cast<double>(nFileSize);
        poDS->GDALMajorObject::SetMetadataItem("COMPRESSION_RATIO", CPLSPrintf("%.3f", dfRatio),
                                               "TEC");
        // tile counts: classical tiles, tiles recoded to reach the PSNR floor, and tiles whose
        // reader needs an AV1 decoder (writers leave out counts of 0)
        for (const char *pszKey : {"fallback_tiles", "floor_tiles", "av1_tiles"})
            poDS->GDALMajorObject::SetMetadataItem(
                CPLString(pszKey).toupper().c_str(),
                CPLSPrintf("%d", IsInt(oStats.GetObj(pszKey)) ? oStats.GetInteger(pszKey) : 0), "TEC");
        // the encoder effort, recorded when not the default
        if (oStats.GetObj("effort").GetType() == CPLJSONObject::Type::String)
            poDS->GDALMajorObject::SetMetadataItem("EFFORT", oStats.GetString("effort").c_str(),
                                                   "TEC");
    }
    if (oRoot.GetObj("created_by").GetType() == CPLJSONObject::Type::String)
        poDS->GDALMajorObject::SetMetadataItem("CREATED_BY",
                                               oRoot.GetString("created_by").c_str(), "TEC");
    poDS->GDALMajorObject::SetMetadataItem("TILE_SIZE", CPLSPrintf("%d", poDS->m_nTileSize),
                                           "TEC");
    poDS->GDALMajorObject::SetMetadataItem("DATES", CPLSPrintf("%lld", static_cast<long long>(nDates)),
                                           "TEC");
    if (nOverlap > 0)
        poDS->GDALMajorObject::SetMetadataItem(
            "TILE_OVERLAP", CPLSPrintf("%d", static_cast<int>(nOverlap)), "TEC");

    std::string osBandList;
    for (int b = 0; b < static_cast<int>(nCount); ++b)
        osBandList += (b ? "," : "") + oBands[b].ToString();
    if (bStackParent)
    {
        // A time stack: no bands of its own, one subdataset per date (as netCDF/HDF).
        for (int d = 0; d < static_cast<int>(nDates); ++d)
        {
            const std::string osLabel = aosDates[d].empty() ? CPLSPrintf("%d", d) : aosDates[d];
            poDS->GDALMajorObject::SetMetadataItem(
                CPLSPrintf("SUBDATASET_%d_NAME", d + 1),
                CPLSPrintf("TEC:\"%s\":%s", osAbsPath.c_str(), osLabel.c_str()), "SUBDATASETS");
            poDS->GDALMajorObject::SetMetadataItem(
                CPLSPrintf("SUBDATASET_%d_DESC", d + 1),
                CPLSPrintf("[%d/%d] date %s: %dx%d, %d bands (%s), %s", d + 1,
                           static_cast<int>(nDates),
                           aosDates[d].empty() ? "(none)" : aosDates[d].c_str(),
                           static_cast<int>(nWidth), static_cast<int>(nHeight),
                           static_cast<int>(nCount), osBandList.c_str(),
                           GDALGetDataTypeName(eDT)),
                "SUBDATASETS");
        }
    }
    else
    {
        if (!poDS->m_osDateLabel.empty() && !aosDates[nDate].empty())
            poDS->GDALMajorObject::SetMetadataItem("DATE", aosDates[nDate].c_str());
        if (pszDateSpec)
            poDS->GDALMajorObject::SetMetadataItem("DATE_INDEX", CPLSPrintf("%d", nDate), "TEC");
        for (int b = 1; b <= static_cast<int>(nCount); ++b)
        {
            auto *poBand = new TECRasterBand(poDS.get(), b);
            poBand->GDALMajorObject::SetDescription(oBands[b - 1].ToString().c_str());
            if (!poDS->m_osDateLabel.empty() && !aosDates[nDate].empty())
                poBand->GDALMajorObject::SetMetadataItem("DATE", aosDates[nDate].c_str());
            poDS->SetBand(b, poBand);
        }
    }

    poDS->m_fp = fp;
    poOpenInfo->fpL = nullptr;  // the dataset owns it now
    poDS->BuildOverviews();
    poDS->SetDescription(poOpenInfo->pszFilename);
    if (pszDateSpec)
    {
        // PAM (.aux.xml) of a subdataset: a <Subdataset> element of the file's .aux.xml.
        poDS->SetPhysicalFilename(poOpenInfo->pszFilename);
        poDS->SetSubdatasetName(poDS->m_osDateLabel.empty() ? "0" : poDS->m_osDateLabel.c_str());
        poDS->TryLoadXML(poOpenInfo->GetSiblingFiles());
    }
    else
    {
        poDS->TryLoadXML(poOpenInfo->GetSiblingFiles());
        poDS->oOvManager.Initialize(poDS.get(), poOpenInfo->pszFilename,
                                    poOpenInfo->GetSiblingFiles());
    }
    return poDS.release();
}

// ================================================================================================
// CreateCopy
// ================================================================================================
namespace
{

// YYYY-MM-DD, optionally followed by a time ("T..." or " ..."); the Python writer checks the rest.
bool LooksLikeISODate(const std::string &s)
{
    if (s.size() < 10 || (s.size() > 10 && s[10] != 'T' && s[10] != ' '))
        return false;
    for (int i = 0; i < 10; ++i)
    {
        const bool bDash = i == 4 || i == 7;
        if (bDash ? s[i] != '-' : (s[i] < '0' || s[i] > '9'))
            return false;
    }
    return true;
}

std::string JoinNames(const std::vector<std::string> &aos)
{
    std::string osOut;
    for (size_t i = 0; i < aos.size(); ++i)
        osOut += (i ? "," : "") + aos[i];
    return osOut;
}

// -co TEMPORAL=YES: consecutive source bands with the same DATE metadata item form one date; each
// date must list the same band descriptions in the same order. Fills the dates and the band
// names of one date; false with a CPLError otherwise.
bool GroupBandsByDate(GDALDataset *poSrcDS, std::vector<std::string> &aosDates,
                      std::vector<std::string> &aosNames)
{
    std::vector<std::vector<std::string>> aaosGroups;
    for (int b = 1; b <= poSrcDS->GetRasterCount(); ++b)
    {
        GDALRasterBand *poBand = poSrcDS->GetRasterBand(b);
        const char *pszDate = poBand->GetMetadataItem("DATE");
        if (!pszDate || !pszDate[0])
        {
            CPLError(CE_Failure, CPLE_AppDefined,
                     "TEC: TEMPORAL=YES: source band %d has no metadata item DATE; every band of "
                     "a time stack source names its date (DATE=YYYY-MM-DD) and its Sentinel-2 "
                     "band (description)",
                     b);
            return false;
        }
        const std::string osDate = pszDate;
        if (!LooksLikeISODate(osDate))
        {
            CPLError(CE_Failure, CPLE_AppDefined,
                     "TEC: TEMPORAL=YES: source band %d has DATE=%s; expected an ISO date "
                     "YYYY-MM-DD",
                     b, pszDate);
            return false;
        }
        if (aosDates.empty() || aosDates.back() != osDate)
        {
            if (std::find(aosDates.begin(), aosDates.end(), osDate) != aosDates.end())
            {
                CPLError(CE_Failure, CPLE_AppDefined,
                         "TEC: TEMPORAL=YES: the bands of date %s are not consecutive (band %d "
                         "starts a second group); order the source bands date by date",
                         pszDate, b);
                return false;
            }
            aosDates.push_back(osDate);
            aaosGroups.emplace_back();
        }
        const char *pszDesc = poBand->GetDescription();
        aaosGroups.back().push_back(pszDesc ? pszDesc : "");
    }
    aosNames = aaosGroups.front();
    for (size_t d = 1; d < aaosGroups.size(); ++d)
    {
        if (aaosGroups[d] != aosNames)
        {
            CPLError(CE_Failure, CPLE_AppDefined,
                     "TEC: TEMPORAL=YES: date %s has the bands (%s) but date %s has (%s); every "
                     "date needs the same bands in the same order",
                     aosDates[0].c_str(), JoinNames(aosNames).c_str(), aosDates[d].c_str(),
                     JoinNames(aaosGroups[d]).c_str());
            return false;
        }
    }
    if (aosNames.size() > static_cast<size_t>(kMaxBands))
    {
        CPLError(CE_Failure, CPLE_NotSupported,
                 "TEC: TEMPORAL=YES: %d bands per date; TEC stores 1 to %d Sentinel-2 bands",
                 static_cast<int>(aosNames.size()), kMaxBands);
        return false;
    }
    return true;
}

// The tile size when BLOCKSIZE is not given, as terracodec.api.default_tile_size: each axis of n
// pixels gets round(n / 512) tiles (at least 1) of ceil(n / tiles) pixels, rounded up to a multiple
// of 16, and the larger of the two axes' sizes is used.
int DefaultTileSize(int nW, int nH)
{
    const auto axis = [](int n)
    {
        const int nTiles = std::max(1, (n + 256) / 512);
        const int nSize = (n + nTiles - 1) / nTiles;
        return (nSize + 15) / 16 * 16;
    };
    return std::min(4096, std::max({16, axis(nW), axis(nH)}));
}

}  // namespace

GDALDataset *TECDataset::CreateCopy(const char *pszFilename, GDALDataset *poSrcDS, int /*bStrict*/,
                                    char **papszOptions, GDALProgressFunc pfnProgress,
                                    void *pProgressData)
{
    if (!pfnProgress)
        pfnProgress = GDALDummyProgress;
    const int nBands = poSrcDS->GetRasterCount();
    const int nW = poSrcDS->GetRasterXSize(), nH = poSrcDS->GetRasterYSize();
    const bool bTemporal = CPLFetchBool(papszOptions, "TEMPORAL", false);
    if (nBands < 1 || (!bTemporal && nBands > kMaxBands))
    {
        CPLError(CE_Failure, CPLE_NotSupported,
                 "TEC: %d bands; TEC stores 1 to %d Sentinel-2 bands", nBands, kMaxBands);
        return nullptr;
    }
    const GDALDataType eDT = poSrcDS->GetRasterBand(1)->GetRasterDataType();
    for (int b = 1; b <= nBands; ++b)
    {
        GDALRasterBand *poBand = poSrcDS->GetRasterBand(b);
        const GDALDataType e = poBand->GetRasterDataType();
        const char *pszPixelType = poBand->GetMetadataItem("PIXELTYPE", "IMAGE_STRUCTURE");
        if (DataTypeName(e) == nullptr || (pszPixelType && EQUAL(pszPixelType, "SIGNEDBYTE")))
        {
            CPLError(CE_Failure, CPLE_NotSupported,
                     "TEC: data type %s (band %d) is not supported; TEC codes Byte (uint8), "
                     "Int16 and UInt16",
                     pszPixelType ? "signed Byte" : GDALGetDataTypeName(e), b);
            return nullptr;
        }
        if (e != eDT)
        {
            CPLError(CE_Failure, CPLE_NotSupported,
                     "TEC: all bands must have the same data type (band 1 is %s, band %d is %s)",
                     GDALGetDataTypeName(eDT), b, GDALGetDataTypeName(e));
            return nullptr;
        }
    }
    if (STARTS_WITH(pszFilename, "/vsi"))
    {
        CPLError(CE_Failure, CPLE_NotSupported,
                 "TEC: writing to GDAL virtual file systems (%s) is not supported", pszFilename);
        return nullptr;
    }
    // Time stack: source bands grouped by date, nPerDate bands per date.
    std::vector<std::string> aosDates, aosDateBands;
    if (bTemporal && !GroupBandsByDate(poSrcDS, aosDates, aosDateBands))
        return nullptr;
    const int nPerDate = bTemporal ? static_cast<int>(aosDateBands.size()) : nBands;
    const char *pszKeyframe = CSLFetchNameValue(papszOptions, "KEYFRAME_INTERVAL");
    if (pszKeyframe && (CPLGetValueType(pszKeyframe) != CPL_VALUE_INTEGER ||
                        atoi(pszKeyframe) < 1 || atoi(pszKeyframe) > 65535))
    {
        CPLError(CE_Failure, CPLE_IllegalArg, "TEC: KEYFRAME_INTERVAL=%s: expected 1..65535",
                 pszKeyframe);
        return nullptr;
    }

    // ---- options ---------------------------------------------------------------------------------
    const char *pszQuality = CSLFetchNameValueDef(papszOptions, "QUALITY", "5");
    const int nQuality = atoi(pszQuality);
    if (nQuality < 1 || nQuality > 8 || CPLGetValueType(pszQuality) != CPL_VALUE_INTEGER)
    {
        CPLError(CE_Failure, CPLE_IllegalArg, "TEC: QUALITY=%s: expected an integer 1..8",
                 pszQuality);
        return nullptr;
    }
    const char *pszEffort = CSLFetchNameValueDef(papszOptions, "EFFORT", "DEFAULT");
    if (!EQUAL(pszEffort, "FAST") && !EQUAL(pszEffort, "DEFAULT") && !EQUAL(pszEffort, "BEST"))
    {
        CPLError(CE_Failure, CPLE_IllegalArg, "TEC: EFFORT=%s: expected FAST, DEFAULT or BEST", pszEffort);
        return nullptr;
    }
    const char *pszBlock = CSLFetchNameValue(papszOptions, "BLOCKSIZE");
    const char *pszBX = CSLFetchNameValue(papszOptions, "BLOCKXSIZE");
    const char *pszBY = CSLFetchNameValue(papszOptions, "BLOCKYSIZE");
    if (!pszBlock && (pszBX || pszBY))
    {
        if (pszBX && pszBY && atoi(pszBX) != atoi(pszBY))
        {
            CPLError(CE_Failure, CPLE_IllegalArg,
                     "TEC: tiles are square: BLOCKXSIZE (%s) must equal BLOCKYSIZE (%s)", pszBX,
                     pszBY);
            return nullptr;
        }
        pszBlock = pszBX ? pszBX : pszBY;
    }
    const int nTile = pszBlock ? atoi(pszBlock) : DefaultTileSize(nW, nH);
    if (nTile < 16 || nTile > 4096)
    {
        CPLError(CE_Failure, CPLE_IllegalArg, "TEC: BLOCKSIZE=%s: expected 16..4096",
                 pszBlock ? pszBlock : "");
        return nullptr;
    }

    // ---- encoder parameters (JSON, read by terracodec.gdal_bridge.Encoder) ----------------------
    CPLJSONObject oParams;
    oParams.Add("path", AbsolutePath(pszFilename));  // a worker process may have another cwd
    oParams.Add("width", nW);
    oParams.Add("height", nH);
    oParams.Add("count", nPerDate);
    oParams.Add("dtype", DataTypeName(eDT));
    oParams.Add("quality", nQuality);
    oParams.Add("tile_size", nTile);
    oParams.Add("effort", CPLString(pszEffort).tolower());
    if (const char *pszModel = CSLFetchNameValue(papszOptions, "MODEL"))
        oParams.Add("model", pszModel);
    else
        oParams.AddNull("model");
    if (const char *pszThreads = CSLFetchNameValue(papszOptions, "NUM_THREADS"))
        oParams.Add("num_threads", pszThreads);
    if (bTemporal)
    {
        CPLJSONArray oDates;
        for (const auto &osDate : aosDates)
            oDates.Add(osDate);
        oParams.Add("dates", oDates);
        if (pszKeyframe)
            oParams.Add("keyframe_interval", atoi(pszKeyframe));
        else
            oParams.AddNull("keyframe_interval");
    }
    // Band names: BANDS option, else the source's band descriptions, else the package default.
    if (const char *pszBands = CSLFetchNameValue(papszOptions, "BANDS"))
        oParams.Add("bands", pszBands);
    else if (bTemporal)
    {
        CPLJSONArray oBandNames;
        bool bNamed = false;
        for (const auto &osName : aosDateBands)
        {
            oBandNames.Add(osName);
            bNamed = bNamed || !osName.empty();
        }
        if (bNamed)
            oParams.Add("bands", oBandNames);
        else
            oParams.AddNull("bands");
    }
    else
    {
        CPLJSONArray oBandNames;
        int nNamed = 0;
        for (int b = 1; b <= nBands; ++b)
        {
            const char *pszDesc = poSrcDS->GetRasterBand(b)->GetDescription();
            oBandNames.Add(pszDesc ? pszDesc : "");
            if (pszDesc && pszDesc[0])
                ++nNamed;
        }
        if (nNamed > 0)
            oParams.Add("bands", oBandNames);
        else
            oParams.AddNull("bands");
    }
    int bHasNoData = FALSE;
    const double dfNoData = poSrcDS->GetRasterBand(1)->GetNoDataValue(&bHasNoData);
    if (bHasNoData)
        oParams.Add("nodata", dfNoData);
    else
        oParams.AddNull("nodata");
    double adfGT[6];
    if (poSrcDS->GetGeoTransform(adfGT) == CE_None)
    {
        CPLJSONArray oGT;
        for (double v : adfGT)
            oGT.Add(v);
        oParams.Add("geotransform", oGT);
    }
    else
        oParams.AddNull("geotransform");
    const OGRSpatialReference *poSRS = poSrcDS->GetSpatialRef();
    char *pszWKT = nullptr;
    if (poSRS && !poSRS->IsEmpty())
    {
        const char *const apszWktOpts[] = {"FORMAT=WKT2_2019", nullptr};
        poSRS->exportToWkt(&pszWKT, apszWktOpts);
    }
    if (pszWKT && pszWKT[0])
        oParams.Add("crs_wkt", pszWKT);
    else
        oParams.AddNull("crs_wkt");
    CPLFree(pszWKT);
    CPLJSONObject oMeta;
    for (CSLConstList papszIter = poSrcDS->GetMetadata(); papszIter && *papszIter; ++papszIter)
    {
        char *pszKey = nullptr;
        const char *pszValue = CPLParseNameValue(*papszIter, &pszKey);
        if (pszKey && pszValue)
            oMeta.Add(pszKey, pszValue);
        CPLFree(pszKey);
    }
    oParams.Add("metadata", oMeta);

    if (!pfnProgress(0.0, nullptr, pProgressData))
    {
        CPLError(CE_Failure, CPLE_UserInterrupt, "TEC: interrupted by the user");
        return nullptr;
    }

    // ---- stream strips of whole tile rows --------------------------------------------------------
    tec::PyEncoder oEncoder;
    std::string osErr;
    if (!oEncoder.Open(oParams.Format(CPLJSONObject::PrettyFormat::Plain), osErr))
    {
        CPLError(CE_Failure, CPLE_AppDefined, "TEC: cannot start the encoder for %s: %s",
                 pszFilename, osErr.c_str());
        return nullptr;
    }
    const int nDTSize = GDALGetDataTypeSizeBytes(eDT);
    std::vector<GByte> abyStrip;
    try
    {
        abyStrip.resize(static_cast<size_t>(nBands) * nTile * nW * nDTSize);
    }
    catch (const std::bad_alloc &)
    {
        CPLError(CE_Failure, CPLE_OutOfMemory, "TEC: out of memory for a %d-row strip", nTile);
        oEncoder.Abort();
        return nullptr;
    }
    for (int y = 0; y < nH; y += nTile)
    {
        const int nRows = std::min(nTile, nH - y);
        const GSpacing nLine = static_cast<GSpacing>(nW) * nDTSize;
        if (poSrcDS->RasterIO(GF_Read, 0, y, nW, nRows, abyStrip.data(), nW, nRows, eDT, nBands,
                              nullptr, nDTSize, nLine, nLine * nRows, nullptr) != CE_None)
        {
            oEncoder.Abort();
            return nullptr;  // the source reported the error
        }
        const size_t nBytes = static_cast<size_t>(nBands) * nRows * nW * nDTSize;
#if CPL_IS_LSB == 0
        GDALSwapWords(abyStrip.data(), nDTSize, static_cast<int>(nBytes / nDTSize), nDTSize);
#endif
        if (!oEncoder.WriteRows(abyStrip.data(), nBytes, nRows, osErr))
        {
            CPLError(CE_Failure, CPLE_AppDefined, "TEC: encoding rows %d-%d of %s failed: %s", y,
                     y + nRows - 1, pszFilename, osErr.c_str());
            oEncoder.Abort();
            return nullptr;
        }
        // each strip is a row of tiles, encoded before the next is read (time stacks too)
        if (!pfnProgress(static_cast<double>(y + nRows) / nH, nullptr, pProgressData))
        {
            oEncoder.Abort();
            CPLError(CE_Failure, CPLE_UserInterrupt, "TEC: interrupted by the user");
            return nullptr;
        }
    }
    if (!oEncoder.Close(osErr))
    {
        CPLError(CE_Failure, CPLE_AppDefined, "TEC: cannot finish %s: %s", pszFilename,
                 osErr.c_str());
        return nullptr;
    }
    pfnProgress(1.0, nullptr, pProgressData);

    GDALOpenInfo oOpenInfo(pszFilename, GA_ReadOnly);
    return Open(&oOpenInfo);
}

// ================================================================================================
TEC_EXPORT void GDALRegister_TEC()
{
    if (!GDAL_CHECK_VERSION("TEC driver"))
        return;
    if (GDALGetDriverByName("TEC") != nullptr)
        return;

    auto *poDriver = new GDALDriver();
    poDriver->SetDescription("TEC");
    poDriver->SetMetadataItem(GDAL_DCAP_RASTER, "YES");
    poDriver->SetMetadataItem(GDAL_DMD_LONGNAME, "TerraCodec learned compression (Sentinel-2)");
    poDriver->SetMetadataItem(GDAL_DMD_EXTENSION, "tec");
    poDriver->SetMetadataItem(GDAL_DMD_CREATIONDATATYPES, "Byte Int16 UInt16");
    poDriver->SetMetadataItem(GDAL_DCAP_VIRTUALIO, "YES");
    poDriver->SetMetadataItem(
        GDAL_DMD_CREATIONOPTIONLIST,
        "<CreationOptionList>"
        "  <Option name='QUALITY' type='int' min='1' max='8' default='5' "
        "description='Quality level, 1 (smallest) to 8 (best)'/>"
        "  <Option name='MODEL' type='string' "
        "description='Codec model name (default: the package default model; lossless: exact; "
        "classical: never the learned candidate, which only EFFORT=BEST tries)'/>"
        "  <Option name='EFFORT' type='string-select' default='DEFAULT' "
        "description='Encoder effort: BEST (AV1 also for 20 m / 60 m bands, slower AV1, the learned candidate) needs "
        "4-8 % fewer bits on val, for about 2x the encode time; FAST encodes tiles of 256 px or more "
        "1.2-1.5x faster for about 1 % more bits (the decoder is the same)'>"
        "    <Value>FAST</Value><Value>DEFAULT</Value><Value>BEST</Value></Option>"
        "  <Option name='BLOCKSIZE' type='int' min='16' max='4096' "
        "description='Tile width and height in pixels (default: about 512, splitting the raster "
        "evenly)'/>"
        "  <Option name='BLOCKXSIZE' type='int' description='Alias of BLOCKSIZE (must equal "
        "BLOCKYSIZE)'/>"
        "  <Option name='BLOCKYSIZE' type='int' description='Alias of BLOCKSIZE (must equal "
        "BLOCKXSIZE)'/>"
        "  <Option name='BANDS' type='string' description='Comma-separated Sentinel-2 band "
        "names (e.g. B02,B03,B04,B08), used when the source bands have no descriptions'/>"
        "  <Option name='NUM_THREADS' type='string' "
        "description='Threads that code tiles in parallel (an integer or ALL_CPUS; default: "
        "up to 4, one per core)'/>"
        "  <Option name='TEMPORAL' type='boolean' default='NO' "
        "description='Write a time stack (TEC-TT): consecutive source bands with the same DATE "
        "metadata item (YYYY-MM-DD) form one date; every date has the same band descriptions'/>"
        "  <Option name='KEYFRAME_INTERVAL' type='int' min='1' max='65535' default='8' "
        "description='TEMPORAL=YES: a date coded without temporal context every N dates'/>"
        "  <Option name='TILED' type='boolean' description='Ignored: TEC is always tiled'/>"
        "  <Option name='INTERLEAVE' type='string' description='Ignored'/>"
        "</CreationOptionList>");
    poDriver->pfnIdentify = TECDataset::Identify;
    poDriver->pfnOpen = TECDataset::Open;
    poDriver->pfnCreateCopy = TECDataset::CreateCopy;
    GetGDALDriverManager()->RegisterDriver(poDriver);
}
