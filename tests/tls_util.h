// TLS test helpers (header-only, so any test suite can use them without a
// build change): a throwaway PKI made by tests/make_test_certs.sh with
// Debian's openssl, TLS/mTLS client channels to 127.0.0.1, token lines, and
// the serial of the certificate a server presented.
#ifndef ATTNSERVE_TESTS_TLS_UTIL_H_
#define ATTNSERVE_TESTS_TLS_UTIL_H_

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include <grpcpp/grpcpp.h>
#include <grpcpp/security/credentials.h>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"

namespace attnserve::testing {

// The files of tests/make_test_certs.sh (see its header): ca, server (serial
// 1001), server2 (serial 1002), client-a, client-b (URI SANs
// spiffe://attnserve.test/client-{a,b}), client-expired, other-ca,
// client-other, server-other; each NAME.pem + NAME.key.
class TestPki {
 public:
  // Makes a fresh PKI in a new directory under `parent` (gtest's TempDir()).
  static absl::StatusOr<TestPki> Make(const std::string& parent) {
    std::string dir = parent + "attnserve_pki_XXXXXX";
    if (mkdtemp(dir.data()) == nullptr) return absl::InternalError("mkdtemp failed in " + parent);
    const std::string script = std::string(ATTNSERVE_SOURCE_DIR) + "/tests/make_test_certs.sh";
    const std::string command = absl::StrCat("sh '", script, "' '", dir, "' 2>&1");
    FILE* pipe = popen(command.c_str(), "r");
    if (pipe == nullptr) return absl::InternalError("cannot run " + script);
    std::string output;
    char buffer[512];
    while (size_t n = fread(buffer, 1, sizeof buffer, pipe)) output.append(buffer, n);
    if (pclose(pipe) != 0) {
      return absl::InternalError(absl::StrCat(script, " failed (is openssl installed?): ", output));
    }
    TestPki pki;
    pki.dir_ = dir;
    return pki;
  }

  const std::string& dir() const { return dir_; }
  std::string Path(const std::string& file) const { return dir_ + "/" + file; }
  std::string Read(const std::string& file) const {
    std::ifstream in(Path(file));
    std::ostringstream out;
    out << in.rdbuf();
    return out.str();
  }

 private:
  std::string dir_;
};

// Writes `text` to `path` atomically (a temporary file renamed over it), as
// cert-manager and Kubernetes volume updates do.
inline void ReplaceFile(const std::string& path, const std::string& text) {
  const std::string temp = path + ".tmp";
  {
    std::ofstream out(temp, std::ios::binary | std::ios::trunc);
    out << text;
  }
  std::filesystem::rename(temp, path);
}

// A TLS channel to 127.0.0.1:`port` trusting `root_pem`, presenting
// `cert_pem`/`key_pem` when given (mTLS). Channels with different `index`
// never share a connection.
inline std::shared_ptr<grpc::Channel> TlsChannel(int port, const std::string& root_pem,
                                                 const std::string& cert_pem = "",
                                                 const std::string& key_pem = "",
                                                 int index = 0) {
  grpc::SslCredentialsOptions ssl;
  ssl.pem_root_certs = root_pem;
  ssl.pem_cert_chain = cert_pem;
  ssl.pem_private_key = key_pem;
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  args.SetInt("attnserve.test.channel_index", index);
  args.SetMaxReceiveMessageSize(64 << 20);
  return grpc::CreateCustomChannel(absl::StrCat("127.0.0.1:", port), grpc::SslCredentials(ssl),
                                   args);
}

// Lower-case hex SHA-256 of `text`: the second field of a token file line.
inline std::string Sha256Hex(const std::string& text) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int length = 0;
  EVP_Digest(text.data(), text.size(), digest, &length, EVP_sha256(), nullptr);
  std::string hex;
  for (unsigned int i = 0; i < length; ++i) {
    char byte[3];
    std::snprintf(byte, sizeof byte, "%02x", digest[i]);
    hex += byte;
  }
  return hex;
}

// The serial (upper-case hex, as openssl prints it) of the certificate the
// server presented on the call that used `context` ("" if none).
inline std::string PeerCertificateSerial(const grpc::ClientContext& context) {
  const auto auth = context.auth_context();
  if (auth == nullptr) return "";
  const auto pems = auth->FindPropertyValues("x509_pem_cert");
  if (pems.empty()) return "";
  const std::string pem(pems.front().data(), pems.front().size());
  BIO* bio = BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size()));
  X509* cert = PEM_read_bio_X509(bio, nullptr, nullptr, nullptr);
  BIO_free(bio);
  if (cert == nullptr) return "";
  BIGNUM* bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(cert), nullptr);
  char* hex = BN_bn2hex(bn);
  std::string serial = hex != nullptr ? hex : "";
  OPENSSL_free(hex);
  BN_free(bn);
  X509_free(cert);
  return serial;
}

}  // namespace attnserve::testing

#endif  // ATTNSERVE_TESTS_TLS_UTIL_H_
