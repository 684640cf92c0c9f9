// Safetensors reading and writing. Every byte count and offset in the file is
// untrusted: each is checked (without overflow) against the file's real size
// before it is used, so a truncated or corrupted file is an error, never an
// out-of-bounds read.
#include "core/safetensors.h"

#include <bit>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/status_util.h"

namespace attnserve::core {
namespace {

using Json = nlohmann::json;

constexpr size_t kHeaderSizeBytes = 8;  // the little-endian u64 before the JSON
constexpr char kMetadataKey[] = "__metadata__";

std::string ShapeString(const std::vector<int64_t>& shape) {
  return Cat("[", Join(shape, ", "), "]");
}

// Bytes per element of the dtypes the safetensors spec names; 0 = unknown
// (its byte range is then only checked against the data section).
uint64_t DTypeBytes(std::string_view name) {
  static constexpr std::pair<std::string_view, uint64_t> kSizes[] = {
      {"BOOL", 1}, {"U8", 1},  {"I8", 1},  {"F8_E4M3", 1}, {"F8_E5M2", 1},
      {"I16", 2},  {"U16", 2}, {"F16", 2}, {"BF16", 2},    {"I32", 4},
      {"U32", 4},  {"F32", 4}, {"F64", 8}, {"I64", 8},     {"U64", 8}};
  for (const auto& [dtype, bytes] : kSizes) {
    if (dtype == name) return bytes;
  }
  return 0;
}

DType ToDType(std::string_view name) {
  if (name == "F32") return DType::kF32;
  if (name == "BF16") return DType::kBF16;
  return DType::kOther;
}

// Reads a non-negative JSON integer; false when `value` is anything else.
bool ReadUint(const Json& value, uint64_t* out) {
  if (!value.is_number_unsigned()) return false;
  *out = value.get<uint64_t>();
  return true;
}

// Reads entry["shape"] into `shape` and its element count into `numel`;
// false unless it is an array of non-negative integers with a product that
// fits 64 bits.
bool ParseShape(const Json& entry, std::vector<int64_t>* shape,
                uint64_t* numel) {
  const auto it = entry.find("shape");
  if (it == entry.end() || !it->is_array()) return false;
  *numel = 1;
  for (const Json& dim : *it) {
    uint64_t d = 0;
    if (!ReadUint(dim, &d) || d > uint64_t{INT64_MAX} ||
        __builtin_mul_overflow(*numel, d, numel)) {
      return false;
    }
    shape->push_back(static_cast<int64_t>(d));
  }
  return true;
}

// Reads entry["data_offsets"]; false unless it is [begin, end], begin <= end.
bool ParseOffsets(const Json& entry, uint64_t* begin, uint64_t* end) {
  const auto it = entry.find("data_offsets");
  return it != entry.end() && it->is_array() && it->size() == 2 &&
         ReadUint((*it)[0], begin) && ReadUint((*it)[1], end) && *begin <= *end;
}

// Parses one tensor entry of the header and checks it against a data section
// of `data_size` bytes.
absl::StatusOr<TensorInfo> ParseTensorEntry(const std::string& path,
                                            const std::string& name,
                                            const Json& entry,
                                            uint64_t data_size) {
  const std::string where = Cat("tensor \"", name, "\": ");
  if (!entry.is_object()) {
    return Invalid(path, Cat(where,
                             "header entry must be an object "
                             "{\"dtype\", \"shape\", \"data_offsets\"}"));
  }
  TensorInfo info;
  if (!entry.contains("dtype") || !entry["dtype"].is_string()) {
    return Invalid(path,
                   Cat(where, "\"dtype\" must be a string such as \"F32\""));
  }
  info.dtype_name = entry["dtype"].get<std::string>();
  info.dtype = ToDType(info.dtype_name);

  uint64_t numel = 1;
  if (!ParseShape(entry, &info.shape, &numel)) {
    return Invalid(path, Cat(where,
                             "\"shape\" must be an array of non-negative "
                             "integers whose product fits 64 bits"));
  }
  if (!ParseOffsets(entry, &info.begin, &info.end)) {
    return Invalid(path, Cat(where,
                             "\"data_offsets\" must be [begin, end] "
                             "with 0 <= begin <= end"));
  }
  if (info.end > data_size) {
    return Invalid(
        path,
        Cat("truncated data: ", where, "bytes [", info.begin, ", ", info.end,
            ") lie beyond the data section of ", data_size, " bytes"));
  }
  const uint64_t element_bytes = DTypeBytes(info.dtype_name);
  uint64_t expected_bytes = 0;
  if (element_bytes != 0 &&
      (__builtin_mul_overflow(numel, element_bytes, &expected_bytes) ||
       info.end - info.begin != expected_bytes)) {
    return Invalid(path,
                   Cat(where, "holds ", info.end - info.begin, " bytes but ",
                       info.dtype_name, " ", ShapeString(info.shape), " needs ",
                       numel, " x ", element_bytes, " bytes"));
  }
  return info;
}

absl::StatusOr<std::vector<char>> ReadWholeFile(const std::string& path) {
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) {
    return absl::NotFoundError(Cat(path, ": no such file"));
  }
  if (std::filesystem::is_directory(path, ec)) {
    return Invalid(path, "is a directory, expected a safetensors file");
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return Invalid(path, Cat("cannot open: ", std::strerror(errno)));
  }
  // One read of the whole file: weights files can be hundreds of megabytes.
  in.seekg(0, std::ios::end);
  const std::streamoff size = in.tellg();
  in.seekg(0, std::ios::beg);
  if (size < 0 || !in) return Invalid(path, "cannot determine the file size");
  std::vector<char> bytes(static_cast<size_t>(size));
  in.read(bytes.data(), size);
  if (in.gcount() != size) {
    return Invalid(path, Cat("read ", in.gcount(), " of ", size, " bytes"));
  }
  return bytes;
}

// Little-endian loads; byte by byte so neither alignment nor host byte order
// matters.
uint64_t LoadLe64(const char* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(p[i]);
  return v;
}
uint32_t LoadLe32(const char* p) {
  return static_cast<uint32_t>(static_cast<unsigned char>(p[0])) |
         static_cast<uint32_t>(static_cast<unsigned char>(p[1])) << 8 |
         static_cast<uint32_t>(static_cast<unsigned char>(p[2])) << 16 |
         static_cast<uint32_t>(static_cast<unsigned char>(p[3])) << 24;
}
uint16_t LoadLe16(const char* p) {
  return static_cast<uint16_t>(static_cast<unsigned char>(p[0]) |
                               static_cast<unsigned char>(p[1]) << 8);
}

void AppendLe(uint64_t v, int bytes, std::string* out) {
  for (int i = 0; i < bytes; ++i)
    out->push_back(static_cast<char>(v >> (8 * i)));
}

// Whether WriteSafetensors can store `tensor` under `name`.
bool Writable(const std::string& name, const TensorToWrite& tensor) {
  uint64_t numel = 1;
  for (int64_t d : tensor.shape) {
    if (d < 0 ||
        __builtin_mul_overflow(numel, static_cast<uint64_t>(d), &numel)) {
      return false;
    }
  }
  return name != kMetadataKey && tensor.dtype != DType::kOther &&
         numel == tensor.values.size();
}

void AppendValues(const std::vector<float>& values, bool f32,
                  std::string* out) {
  for (float v : values) {
    if (f32) {
      AppendLe(std::bit_cast<uint32_t>(v), 4, out);
    } else {
      AppendLe(FloatToBf16(v), 2, out);
    }
  }
}

}  // namespace

absl::StatusOr<SafetensorsFile> SafetensorsFile::Open(const std::string& path) {
  absl::StatusOr<std::vector<char>> bytes = ReadWholeFile(path);
  if (!bytes.ok()) return bytes.status();
  const uint64_t file_size = bytes->size();
  if (file_size < kHeaderSizeBytes) {
    return Invalid(path, Cat("file is ", file_size,
                             " bytes, shorter than the 8-byte header "
                             "size that starts a safetensors file"));
  }
  const uint64_t header_size = LoadLe64(bytes->data());
  if (header_size > file_size - kHeaderSizeBytes) {
    return Invalid(path,
                   Cat("header larger than the file: 8 + ", header_size,
                       " header bytes > file size ", file_size, " bytes"));
  }
  const char* header_begin = bytes->data() + kHeaderSizeBytes;
  Json header;
  try {
    header = Json::parse(header_begin, header_begin + header_size);
  } catch (const Json::exception& e) {  // parse_error or number out_of_range
    std::string_view what = e.what();   // drop the "[json.exception...] " tag
    if (const size_t tag_end = what.find("] "); tag_end != what.npos) {
      what.remove_prefix(tag_end + 2);
    }
    return Invalid(path, Cat("header is not valid JSON: ", what));
  }
  if (!header.is_object()) {
    return Invalid(
        path, Cat("header must be a JSON object; was ", header.type_name()));
  }

  SafetensorsFile file;
  file.path_ = path;
  const uint64_t data_offset = kHeaderSizeBytes + header_size;
  const uint64_t data_size = file_size - data_offset;
  for (const auto& [name, entry] : header.items()) {
    if (name == kMetadataKey) continue;  // free-form strings; nothing we use
    absl::StatusOr<TensorInfo> info =
        ParseTensorEntry(path, name, entry, data_size);
    if (!info.ok()) return info.status();
    file.tensors_.emplace(name, *std::move(info));
  }
  // Drop the header in place rather than copy the (large) data section.
  bytes->erase(bytes->begin(), bytes->begin() + data_offset);
  file.data_ = *std::move(bytes);
  return file;
}

absl::StatusOr<std::vector<float>> SafetensorsFile::ReadF32(
    const std::string& name, const std::vector<int64_t>& expected_shape) const {
  const std::string expected = Cat("F32 or BF16 ", ShapeString(expected_shape));
  const auto it = tensors_.find(name);
  if (it == tensors_.end()) {
    return Invalid(
        path_, Cat("missing tensor \"", name, "\" (expected ", expected, ")"));
  }
  const TensorInfo& info = it->second;
  if (info.dtype == DType::kOther) {
    return Invalid(path_, Cat("tensor \"", name, "\" has dtype ",
                              info.dtype_name, "; expected F32 or BF16"));
  }
  if (info.shape != expected_shape) {
    return Invalid(
        path_, Cat("tensor \"", name, "\" has shape ", ShapeString(info.shape),
                   "; expected ", ShapeString(expected_shape)));
  }
  // Open checked end - begin == numel x element size and end <= data size.
  const size_t element_bytes = info.dtype == DType::kF32 ? 4 : 2;
  const size_t numel = (info.end - info.begin) / element_bytes;
  std::vector<float> values(numel);
  const char* src = data_.data() + info.begin;
  for (size_t i = 0; i < numel; ++i, src += element_bytes) {
    values[i] = info.dtype == DType::kF32 ? std::bit_cast<float>(LoadLe32(src))
                                          : Bf16ToFloat(LoadLe16(src));
    if (!std::isfinite(values[i])) {
      return Invalid(path_, Cat("tensor \"", name,
                                "\" holds a non-finite "
                                "value (",
                                values[i], ") at flat index ", i,
                                "; expected finite numbers"));
    }
  }
  return values;
}

absl::Status WriteSafetensors(
    const std::string& path,
    const std::map<std::string, TensorToWrite>& tensors) {
  Json header = Json::object();
  std::string data;
  for (const auto& [name, tensor] : tensors) {  // std::map: name order
    if (!Writable(name, tensor)) {
      return Invalid(
          path, Cat("cannot write tensor \"", name, "\" ",
                    ShapeString(tensor.shape), " with ", tensor.values.size(),
                    " values (needs F32 or BF16, a matching "
                    "value count and a non-reserved name)"));
    }
    const bool f32 = tensor.dtype == DType::kF32;
    const uint64_t begin = data.size();
    AppendValues(tensor.values, f32, &data);
    header[name] = {
        {"dtype", f32 ? "F32" : "BF16"},
        {"shape", tensor.shape},
        {"data_offsets", {begin, static_cast<uint64_t>(data.size())}}};
  }
  std::string header_text = header.dump();
  // The spec allows trailing spaces; padding to 8 keeps the data aligned for
  // readers that map the file.
  header_text.append((8 - header_text.size() % 8) % 8, ' ');

  std::string prefix;
  AppendLe(header_text.size(), 8, &prefix);
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << prefix << header_text << data;
  out.close();
  if (!out) {
    return absl::InternalError(
        Cat(path, ": cannot write: ", std::strerror(errno)));
  }
  return absl::OkStatus();
}

uint16_t FloatToBf16(float f) {
  const uint32_t bits = std::bit_cast<uint32_t>(f);
  if (std::isnan(f)) {
    // Keep NaN a (quiet) NaN: rounding could carry its payload into infinity.
    return static_cast<uint16_t>((bits >> 16) | 0x0040);
  }
  // Round to nearest, ties to even: add 0x7FFF plus the lowest kept bit.
  const uint32_t rounding = 0x7FFF + ((bits >> 16) & 1);
  return static_cast<uint16_t>((bits + rounding) >> 16);
}

float Bf16ToFloat(uint16_t b) {
  return std::bit_cast<float>(static_cast<uint32_t>(b) << 16);
}

}  // namespace attnserve::core
