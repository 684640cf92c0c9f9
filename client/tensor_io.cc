#include "client/tensor_io.h"

#include <cstring>
#include <fstream>
#include <limits>
#include <sstream>

#include <google/protobuf/util/json_util.h>
#include <nlohmann/json.hpp>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace attnserve::client {
namespace {

constexpr char kMagic[] = "\x93NUMPY";

absl::Status Bad(const std::string& path, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat(path, ": ", what));
}

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot open"));
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

// The value of `key` in a .npy header dict ("{'descr': '<f4', ...}"): the
// text after "'key':" up to the next top-level comma or closing brace.
std::string HeaderValue(const std::string& header, const std::string& key) {
  const size_t at = header.find("'" + key + "'");
  if (at == std::string::npos) return "";
  size_t pos = header.find(':', at);
  if (pos == std::string::npos) return "";
  int depth = 0;
  std::string value;
  for (++pos; pos < header.size(); ++pos) {
    const char c = header[pos];
    if (c == '(') ++depth;
    if (c == ')') --depth;
    if (depth == 0 && (c == ',' || c == '}')) break;
    if (c != ' ') value += c;
  }
  return value;
}

}  // namespace

absl::StatusOr<NpyArray> ReadNpy(const std::string& path) {
  absl::StatusOr<std::string> file = ReadFile(path);
  if (!file.ok()) return file.status();
  const std::string& bytes = *file;
  if (bytes.size() < 10 || bytes.compare(0, 6, kMagic, 6) != 0) {
    return Bad(path, "not a .npy file (no \\x93NUMPY magic)");
  }
  const int major = static_cast<unsigned char>(bytes[6]);
  size_t header_len = 0, offset = 0;
  if (major == 1) {
    header_len = static_cast<unsigned char>(bytes[8]) | static_cast<unsigned char>(bytes[9]) << 8;
    offset = 10;
  } else if (major == 2 || major == 3) {
    if (bytes.size() < 12) return Bad(path, "truncated .npy header");
    for (int i = 0; i < 4; ++i) header_len |= size_t{static_cast<unsigned char>(bytes[8 + i])} << (8 * i);
    offset = 12;
  } else {
    return Bad(path, absl::StrCat(".npy format version ", major, " is not supported"));
  }
  if (bytes.size() < offset + header_len) return Bad(path, "truncated .npy header");
  const std::string header = bytes.substr(offset, header_len);
  const std::string descr = HeaderValue(header, "descr");
  if (descr != "'<f4'" && descr != "'f4'") {
    return Bad(path, absl::StrCat("dtype is ", descr, "; expected float32 ('<f4'): ",
                                  "save with array.astype(numpy.float32)"));
  }
  if (HeaderValue(header, "fortran_order") != "False") {
    return Bad(path, "array is in Fortran order; expected C order");
  }
  std::string shape_text = HeaderValue(header, "shape");
  if (shape_text.size() < 2 || shape_text.front() != '(' || shape_text.back() != ')') {
    return Bad(path, "unreadable shape in the .npy header");
  }
  NpyArray array;
  std::stringstream dims(shape_text.substr(1, shape_text.size() - 2));
  const size_t data_at = offset + header_len;
  // Past this the byte count 4 * count would wrap around uint64_t.
  constexpr uint64_t max_count = std::numeric_limits<uint64_t>::max() / 4;
  uint64_t count = 1;
  bool too_big = false;   // the product exceeds max_count (count may have wrapped)
  bool has_zero = false;  // a zero dimension: no data, whatever the others
  for (std::string dim; std::getline(dims, dim, ',');) {
    if (dim.empty()) continue;
    uint64_t n = 0;
    if (!absl::SimpleAtoi(dim, &n)) {
      return Bad(path, absl::StrCat("unreadable shape ", shape_text, " in the .npy header"));
    }
    array.shape.push_back(n);
    if (n == 0) has_zero = true;
    if (n != 0 && count > max_count / n) too_big = true;
    count *= n;
  }
  if (has_zero) {
    too_big = false;
    count = 0;
  }
  if (too_big || bytes.size() - data_at != 4 * count) {
    return Bad(path, absl::StrCat("holds ", bytes.size() - data_at, " bytes of data; its shape ",
                                  shape_text, " needs ",
                                  too_big ? "more" : absl::StrCat(4 * count)));
  }
  array.data.resize(count);
  // An empty vector's data() may be null, which memcpy must not get even for
  // 0 bytes (UBSan: nonnull-attribute).
  if (count > 0) std::memcpy(array.data.data(), bytes.data() + data_at, 4 * count);
  return array;
}

absl::Status WriteNpy(const std::string& path, const NpyArray& array) {
  std::string shape = "(";
  for (uint64_t n : array.shape) absl::StrAppend(&shape, n, ",");
  if (array.shape.size() > 1) shape.pop_back();  // (3,) but (3,4)
  shape += ")";
  std::string header =
      absl::StrCat("{'descr': '<f4', 'fortran_order': False, 'shape': ", shape, ", }");
  // Magic, version, length, header padded with spaces and a newline so the
  // data starts on a 64-byte boundary.
  const size_t unpadded = 10 + header.size() + 1;
  header.append((64 - unpadded % 64) % 64, ' ');
  header += '\n';
  std::ofstream out(path, std::ios::binary);
  if (!out) return absl::PermissionDeniedError(absl::StrCat(path, ": cannot write"));
  out.write(kMagic, 6);
  const char version_and_len[4] = {1, 0, static_cast<char>(header.size() & 0xff),
                                    static_cast<char>(header.size() >> 8)};
  out.write(version_and_len, 4);
  out.write(header.data(), static_cast<std::streamsize>(header.size()));
  out.write(reinterpret_cast<const char*>(array.data.data()),
            static_cast<std::streamsize>(4 * array.data.size()));
  if (!out) return absl::DataLossError(absl::StrCat(path, ": write failed"));
  return absl::OkStatus();
}

v1::AttendRequest RandomRequest(std::mt19937& rng, uint32_t rows, uint32_t d_model) {
  std::uniform_real_distribution<float> u(-1, 1);
  v1::AttendRequest r;
  r.mutable_input()->set_rows(rows);
  r.mutable_input()->set_cols(d_model);
  r.mutable_input()->mutable_data()->Reserve(static_cast<int>(rows * d_model));
  for (uint32_t i = 0; i < rows * d_model; ++i) r.mutable_input()->add_data(u(rng));
  return r;
}

absl::Status SetInput(const NpyArray& matrix, v1::AttendRequest* request) {
  if (matrix.shape.size() != 2) {
    return absl::InvalidArgumentError(absl::StrCat(
        "input must be 2-D (rows x d_model); has ", matrix.shape.size(), " dimensions"));
  }
  if (matrix.shape[0] > UINT32_MAX || matrix.shape[1] > UINT32_MAX) {
    return absl::InvalidArgumentError(absl::StrCat("input shape (", matrix.shape[0], ", ",
                                                   matrix.shape[1],
                                                   ") does not fit the wire's uint32 rows/cols"));
  }
  v1::Matrix* input = request->mutable_input();
  input->set_rows(static_cast<uint32_t>(matrix.shape[0]));
  input->set_cols(static_cast<uint32_t>(matrix.shape[1]));
  input->mutable_data()->Assign(matrix.data.begin(), matrix.data.end());
  return absl::OkStatus();
}

absl::StatusOr<std::vector<v1::AttendRequest>> ReadRequestsJson(const std::string& path) {
  absl::StatusOr<std::string> text = ReadFile(path);
  if (!text.ok()) return text.status();
  nlohmann::json doc = nlohmann::json::parse(*text, nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded()) return Bad(path, "not valid JSON");
  auto parse_request = [&](const nlohmann::json& j,
                           size_t index) -> absl::StatusOr<v1::AttendRequest> {
    v1::AttendRequest request;
    const auto status = google::protobuf::util::JsonStringToMessage(j.dump(), &request);
    if (!status.ok()) {
      return Bad(path, absl::StrCat("request ", index, " is not an AttendRequest: ",
                                    std::string(status.message())));
    }
    return request;
  };
  std::vector<v1::AttendRequest> requests;
  if (doc.is_object()) {
    absl::StatusOr<v1::AttendRequest> r = parse_request(doc, 0);
    if (!r.ok()) return r.status();
    requests.push_back(*std::move(r));
  } else if (doc.is_array() && !doc.empty() && doc[0].is_array()) {  // a matrix
    NpyArray matrix;
    matrix.shape = {doc.size(), doc[0].size()};
    for (size_t i = 0; i < doc.size(); ++i) {
      if (!doc[i].is_array() || doc[i].size() != matrix.shape[1]) {
        return Bad(path, absl::StrCat("row ", i, " does not have ", matrix.shape[1],
                                      " numbers like row 0"));
      }
      for (const nlohmann::json& v : doc[i]) {
        if (!v.is_number()) return Bad(path, absl::StrCat("row ", i, " holds a non-number"));
        matrix.data.push_back(v.get<float>());
      }
    }
    requests.emplace_back();
    if (absl::Status s = SetInput(matrix, &requests.back()); !s.ok()) return s;
  } else if (doc.is_array() && !doc.empty()) {
    for (size_t i = 0; i < doc.size(); ++i) {
      absl::StatusOr<v1::AttendRequest> r = parse_request(doc[i], i);
      if (!r.ok()) return r.status();
      requests.push_back(*std::move(r));
    }
  } else {
    return Bad(path, "expected an AttendRequest object, an array of them, or a matrix");
  }
  return requests;
}

}  // namespace attnserve::client
