#include "server/transport_security.h"

#include <grpc/grpc_security.h>
#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include <vector>

#include <spdlog/spdlog.h>

#include "absl/strings/str_cat.h"
#include "server/file_watcher.h"

namespace attnserve::server {
namespace {

struct BioFree {
  void operator()(BIO* b) const { BIO_free(b); }
};
struct X509Free {
  void operator()(X509* x) const { X509_free(x); }
};
struct PkeyFree {
  void operator()(EVP_PKEY* k) const { EVP_PKEY_free(k); }
};
using BioPtr = std::unique_ptr<BIO, BioFree>;
using X509Ptr = std::unique_ptr<X509, X509Free>;
using PkeyPtr = std::unique_ptr<EVP_PKEY, PkeyFree>;

absl::StatusOr<X509Ptr> FirstCertificate(const std::string& flag, const std::string& path) {
  auto pem = ReadWholeFile(path);
  if (!pem.ok()) return absl::InvalidArgumentError(absl::StrCat(flag, ": ", pem.status().message()));
  BioPtr bio(BIO_new_mem_buf(pem->data(), static_cast<int>(pem->size())));
  X509Ptr cert(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
  if (cert == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat(flag, " ", path, ": no PEM certificate (-----BEGIN CERTIFICATE-----) in it"));
  }
  return cert;
}

// The auth metadata processor, at gRPC's C level so that it also works on a
// plaintext port (the C++ InsecureServerCredentials refuse a processor).
// Runs on gRPC's thread for each call before the handler; non-blocking.
void ProcessAuthMetadata(void* state, grpc_auth_context* context, const grpc_metadata* md,
                         size_t num_md, grpc_process_auth_metadata_done_cb done, void* user_data) {
  auto& access = *static_cast<std::shared_ptr<AccessControl>*>(state);
  auto view = [](const grpc_slice& s) {
    return std::string_view(reinterpret_cast<const char*>(GRPC_SLICE_START_PTR(s)),
                            GRPC_SLICE_LENGTH(s));
  };
  AccessControl::Call call;
  const grpc_metadata* authorization = nullptr;
  for (size_t i = 0; i < num_md; ++i) {
    const std::string_view key = view(md[i].key);
    if (key == ":path") call.path = view(md[i].value);
    if (key == "authorization") authorization = &md[i];
  }
  if (authorization != nullptr) call.authorization = view(authorization->value);
  // The verified client certificate's identities, in the order gRPC's
  // authorization policy matches them: URI SANs, DNS SANs, the subject.
  std::vector<std::string> principals;
  for (const char* name : {GRPC_PEER_URI_PROPERTY_NAME, GRPC_PEER_DNS_PROPERTY_NAME,
                           GRPC_X509_SUBJECT_PROPERTY_NAME}) {
    grpc_auth_property_iterator it = grpc_auth_context_find_properties_by_name(context, name);
    while (const grpc_auth_property* p = grpc_auth_property_iterator_next(&it)) {
      principals.emplace_back(p->value, p->value_length);
    }
  }
  call.cert_principals = principals;
  const absl::Status status = access->Check(call);
  const std::string message(status.message());
  // The token is consumed: handlers never see it.
  done(user_data, authorization, authorization != nullptr ? 1 : 0, nullptr, 0,
       static_cast<grpc_status_code>(status.code()), status.ok() ? nullptr : message.c_str());
}

// ServerCredentials over gRPC's C credentials, so the processor above can be
// attached to plaintext and TLS ports alike.
class CoreServerCredentials final : public grpc::ServerCredentials {
 public:
  CoreServerCredentials(SecurityOptions options, std::shared_ptr<AccessControl> access)
      : options_(std::move(options)), access_(std::move(access)) {}

  void SetAuthMetadataProcessor(const std::shared_ptr<grpc::AuthMetadataProcessor>&) override {
    // Not used: AccessControl is the processor.
  }

 private:
  int AddPortToServer(const std::string& address, grpc_server* server) override {
    grpc_server_credentials* creds = options_.tls() ? TlsCredentials()
                                                    : grpc_insecure_server_credentials_create();
    if (access_ != nullptr) {
      grpc_auth_metadata_processor processor;
      processor.process = ProcessAuthMetadata;
      processor.destroy = [](void* state) {
        delete static_cast<std::shared_ptr<AccessControl>*>(state);
      };
      processor.state = new std::shared_ptr<AccessControl>(access_);
      grpc_server_credentials_set_auth_metadata_processor(creds, processor);
    }
    const int port = grpc_server_add_http2_port(server, address.c_str(), creds);
    grpc_server_credentials_release(creds);
    return port;
  }

  grpc_server_credentials* TlsCredentials() const {
    const unsigned refresh_s = static_cast<unsigned>(options_.tls_refresh_s);
    grpc_tls_certificate_provider* provider = grpc_tls_certificate_provider_file_watcher_create(
        options_.tls_key_path.c_str(), options_.tls_cert_path.c_str(),
        options_.mtls() ? options_.tls_client_ca_path.c_str() : "", refresh_s);
    grpc_tls_credentials_options* tls = grpc_tls_credentials_options_create();
    grpc_tls_credentials_options_set_certificate_provider(tls, provider);
    grpc_tls_credentials_options_watch_identity_key_cert_pairs(tls);
    if (options_.mtls()) {
      grpc_tls_credentials_options_watch_root_certs(tls);
      grpc_tls_credentials_options_set_cert_request_type(
          tls, GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
    }
    grpc_server_credentials* creds = grpc_tls_server_credentials_create(tls);  // owns `tls`
    grpc_tls_certificate_provider_release(provider);  // the options hold their own reference
    return creds;
  }

  const SecurityOptions options_;
  const std::shared_ptr<AccessControl> access_;
};

}  // namespace

absl::Status CheckTlsFiles(const SecurityOptions& o) {
  if (!o.tls()) return absl::OkStatus();
  auto cert = FirstCertificate("--tls-cert", o.tls_cert_path);
  if (!cert.ok()) return cert.status();
  auto key_pem = ReadWholeFile(o.tls_key_path);
  if (!key_pem.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("--tls-key: ", key_pem.status().message()));
  }
  BioPtr bio(BIO_new_mem_buf(key_pem->data(), static_cast<int>(key_pem->size())));
  PkeyPtr key(PEM_read_bio_PrivateKey(bio.get(), nullptr, nullptr, nullptr));
  if (key == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--tls-key ", o.tls_key_path, ": no unencrypted PEM private key in it"));
  }
  if (X509_check_private_key(cert->get(), key.get()) != 1) {
    return absl::InvalidArgumentError(absl::StrCat("--tls-key ", o.tls_key_path,
                                                   " is not the key of --tls-cert ",
                                                   o.tls_cert_path));
  }
  if (o.mtls()) {
    auto ca = FirstCertificate("--tls-client-ca", o.tls_client_ca_path);
    if (!ca.ok()) return ca.status();
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> DescribeCertificate(const std::string& path) {
  auto cert = FirstCertificate("certificate", path);
  if (!cert.ok()) return cert.status();
  BioPtr out(BIO_new(BIO_s_mem()));
  X509_NAME_print_ex(out.get(), X509_get_subject_name(cert->get()), 0, XN_FLAG_RFC2253);
  BIO_puts(out.get(), ", serial ");
  BIGNUM* serial = ASN1_INTEGER_to_BN(X509_get0_serialNumber(cert->get()), nullptr);
  char* hex = serial != nullptr ? BN_bn2hex(serial) : nullptr;
  BIO_puts(out.get(), hex != nullptr ? hex : "?");
  OPENSSL_free(hex);
  BN_free(serial);
  BIO_puts(out.get(), ", expires ");
  ASN1_TIME_print(out.get(), X509_get0_notAfter(cert->get()));
  char* data = nullptr;
  const long size = BIO_get_mem_data(out.get(), &data);
  return absl::StrCat("subject ", std::string(data, static_cast<size_t>(size)));
}

std::unique_ptr<FileWatcher> WatchCertificateForLog(const SecurityOptions& options,
                                                    Clock* clock) {
  if (!options.tls()) return nullptr;
  const std::string path = options.tls_cert_path;
  return std::make_unique<FileWatcher>(
      path, options.tls_refresh_s * 1'000'000, clock,
      [path](const absl::StatusOr<std::string>& contents) {
        auto described = contents.ok() ? DescribeCertificate(path) : contents.status();
        if (described.ok()) {
          spdlog::info("TLS certificate {} changed: {}", path, *described);
        } else {
          spdlog::error("TLS certificate {} changed but is not usable (new connections keep the "
                        "previous one): {}", path, std::string(described.status().message()));
        }
      });
}

std::shared_ptr<grpc::ServerCredentials> MakeServerCredentials(
    const SecurityOptions& options, std::shared_ptr<AccessControl> access) {
  return std::make_shared<CoreServerCredentials>(options, std::move(access));
}

std::string DescribeSecurity(const SecurityOptions& o) {
  std::string mode = "plaintext";
  if (o.mtls()) {
    mode = absl::StrCat("mTLS (client certificates required, CA ", o.tls_client_ca_path,
                        "; files re-read every ", o.tls_refresh_s, " s)");
  } else if (o.tls()) {
    mode = absl::StrCat("TLS (no client certificates; files re-read every ", o.tls_refresh_s,
                        " s)");
  }
  return absl::StrCat(mode, ", bearer tokens ",
                      o.auth_tokens_path.empty() ? "off" : "on (" + o.auth_tokens_path + ")",
                      ", authorization policy ",
                      o.authz_policy_path.empty() ? "off" : "on (" + o.authz_policy_path + ")",
                      ", reflection ", o.reflection ? "on" : "off", ", health port ",
                      o.health_port ? std::to_string(o.health_port) : std::string("off"));
}

}  // namespace attnserve::server
