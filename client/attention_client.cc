#include "client/attention_client.h"

#include <chrono>
#include <fstream>
#include <sstream>
#include <thread>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace attnserve::client {
namespace {

absl::StatusOr<std::string> ReadPem(const std::string& path) {
  if (path.empty()) return std::string();
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::InvalidArgumentError(absl::StrCat("cannot read TLS file ", path));
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

absl::Status ValidateSecurity(const ClientOptions& o) {
  if (!o.tls && (!o.tls_root_certs_path.empty() || !o.tls_client_cert_path.empty() ||
                 !o.tls_client_key_path.empty() || !o.tls_server_name.empty())) {
    return absl::InvalidArgumentError(
        "TLS files or a TLS server name are set but tls is off: set tls (attnctl --tls)");
  }
  if (o.tls_client_cert_path.empty() != o.tls_client_key_path.empty()) {
    return absl::InvalidArgumentError(
        "a client certificate needs its private key and the other way round: give both "
        "tls_client_cert_path and tls_client_key_path (attnctl --tls-cert and --tls-key)");
  }
  // RFC 6750's b64token is stricter; any visible ASCII is a valid header
  // value. The message names the position, never the token.
  for (size_t i = 0; i < o.token.size(); ++i) {
    const unsigned char c = static_cast<unsigned char>(o.token[i]);
    if (c < 0x21 || c > 0x7e) {
      return absl::InvalidArgumentError(absl::StrCat(
          "the token holds a character that cannot be sent in a header (whitespace, control "
          "or non-ASCII) at position ", i + 1, " of ", o.token.size()));
    }
  }
  return absl::OkStatus();
}

absl::Status Validate(const ClientOptions& o) {
  if (o.target.empty()) return absl::InvalidArgumentError("target must be set; was empty");
  if (o.deadline_ms <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("deadline_ms must be positive; was ", o.deadline_ms));
  }
  if (o.max_retries < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_retries must be >= 0; was ", o.max_retries));
  }
  if (o.retry_backoff_ms < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("retry_backoff_ms must be >= 0; was ", o.retry_backoff_ms));
  }
  if (o.load_balancing != "pick_first" && o.load_balancing != "round_robin") {
    return absl::InvalidArgumentError(absl::StrCat(
        "load_balancing must be pick_first or round_robin; was '", o.load_balancing, "'"));
  }
  if (o.max_receive_message_bytes <= 0 || o.max_receive_message_bytes > INT32_MAX) {
    return absl::InvalidArgumentError(absl::StrCat(
        "max_receive_message_bytes must be in [1, 2^31); was ", o.max_receive_message_bytes));
  }
  return ValidateSecurity(o);
}

}  // namespace

void AddCallMetadata(const ClientOptions& options, grpc::ClientContext* context) {
  if (!options.token.empty()) context->AddMetadata("authorization", "Bearer " + options.token);
}

absl::StatusOr<std::shared_ptr<grpc::Channel>> MakeChannel(const ClientOptions& options,
                                                           int index) {
  if (absl::Status s = Validate(options); !s.ok()) return s;
  std::shared_ptr<grpc::ChannelCredentials> credentials = grpc::InsecureChannelCredentials();
  if (options.tls) {
    grpc::SslCredentialsOptions ssl;
    for (auto [path, field] : {std::pair{&options.tls_root_certs_path, &ssl.pem_root_certs},
                               std::pair{&options.tls_client_cert_path, &ssl.pem_cert_chain},
                               std::pair{&options.tls_client_key_path, &ssl.pem_private_key}}) {
      absl::StatusOr<std::string> pem = ReadPem(*path);
      if (!pem.ok()) return pem.status();
      *field = *std::move(pem);
    }
    credentials = grpc::SslCredentials(ssl);
  }
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(static_cast<int>(options.max_receive_message_bytes));
  args.SetMaxSendMessageSize(-1);  // the server decides what it accepts
  args.SetLoadBalancingPolicyName(options.load_balancing);
  // Channels with different arguments never share a subchannel (connection).
  if (index > 0) args.SetInt("attnserve.channel_index", index);
  if (options.tls && !options.tls_server_name.empty()) {
    args.SetSslTargetNameOverride(options.tls_server_name);
  }
  return grpc::CreateCustomChannel(options.target, credentials, args);
}

absl::StatusOr<std::unique_ptr<AttentionClient>> AttentionClient::Create(
    const ClientOptions& options) {
  absl::StatusOr<std::shared_ptr<grpc::Channel>> channel = MakeChannel(options);
  if (!channel.ok()) return channel.status();
  return std::unique_ptr<AttentionClient>(new AttentionClient(options, *std::move(channel)));
}

AttentionClient::AttentionClient(const ClientOptions& options,
                                 std::shared_ptr<grpc::Channel> channel)
    : options_(options),
      channel_(std::move(channel)),
      stub_(v1::Attention::NewStub(channel_)),
      health_(grpc::health::v1::Health::NewStub(channel_)),
      repository_(v1::ModelRepository::NewStub(channel_)) {}

std::unique_ptr<grpc::ClientContext> AttentionClient::NewContext() const {
  auto context = std::make_unique<grpc::ClientContext>();
  context->set_deadline(std::chrono::system_clock::now() +
                        std::chrono::milliseconds(options_.deadline_ms));
  AddCallMetadata(options_, context.get());
  return context;
}

template <typename Call>
grpc::Status AttentionClient::WithRetries(Call call, int* attempts) {
  int64_t backoff_ms = options_.retry_backoff_ms;
  for (int attempt = 1;; ++attempt) {
    grpc::Status status = call(*NewContext());
    if (attempts != nullptr) *attempts = attempt;
    if (status.error_code() != grpc::StatusCode::UNAVAILABLE || attempt > options_.max_retries) {
      return status;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(backoff_ms));
    backoff_ms *= 2;
  }
}

grpc::Status AttentionClient::Attend(const v1::AttendRequest& request,
                                     v1::AttendResponse* response, int* attempts) {
  return WithRetries(
      [&](grpc::ClientContext& context) {
        response->Clear();
        return stub_->Attend(&context, request, response);
      },
      attempts);
}

grpc::Status AttentionClient::ListModels(v1::ListModelsResponse* response) {
  return WithRetries(
      [&](grpc::ClientContext& context) {
        response->Clear();
        return stub_->ListModels(&context, v1::ListModelsRequest(), response);
      },
      nullptr);
}

grpc::Status AttentionClient::CheckHealth(
    const std::string& service, grpc::health::v1::HealthCheckResponse::ServingStatus* status) {
  grpc::health::v1::HealthCheckRequest request;
  request.set_service(service);
  grpc::health::v1::HealthCheckResponse response;
  grpc::Status s = health_->Check(NewContext().get(), request, &response);
  *status = s.ok() ? response.status() : grpc::health::v1::HealthCheckResponse::UNKNOWN;
  return s;
}

grpc::Status AttentionClient::LoadModel(const std::string& name,
                                        v1::LoadModelResponse* response) {
  v1::LoadModelRequest request;
  request.set_name(name);
  return repository_->LoadModel(NewContext().get(), request, response);
}

grpc::Status AttentionClient::UnloadModel(const std::string& name) {
  v1::UnloadModelRequest request;
  request.set_name(name);
  v1::UnloadModelResponse response;
  return repository_->UnloadModel(NewContext().get(), request, &response);
}

grpc::Status AttentionClient::ListRepository(v1::ListRepositoryResponse* response) {
  return repository_->ListRepository(NewContext().get(), v1::ListRepositoryRequest(), response);
}

absl::StatusOr<std::unique_ptr<AttentionSession>> AttentionClient::OpenSession(
    const v1::SessionOpen& open) {
  std::unique_ptr<AttentionSession> session(new AttentionSession());
  // No deadline: NewContext's per-call deadline would end a long session.
  AddCallMetadata(options_, &session->context_);
  session->stream_ = stub_->Session(&session->context_);
  v1::SessionRequest request;
  *request.mutable_open() = open;
  v1::SessionResponse reply;
  grpc::Status status;
  if (!session->stream_->Write(request)) {
    status = session->End(grpc::Status(grpc::StatusCode::INTERNAL,
                                       "the session's stream ended before its open was sent"));
  } else if (!session->stream_->Read(&reply)) {
    status = session->End(grpc::Status(
        grpc::StatusCode::INTERNAL, "the server ended the session without answering its open"));
  } else if (!reply.has_opened()) {
    // The destructor cancels the stream.
    status = grpc::Status(grpc::StatusCode::INTERNAL,
                          "the server's first session reply holds no SessionOpened");
  }
  if (!status.ok()) {
    return absl::Status(static_cast<absl::StatusCode>(status.error_code()),
                        status.error_message());
  }
  session->opened_ = reply.opened();
  session->session_id_ = reply.session_id();
  return session;
}

AttentionSession::~AttentionSession() {
  if (stream_ == nullptr || ended_) return;
  context_.TryCancel();
  End(grpc::Status::OK);
}

grpc::Status AttentionSession::Append(const v1::Matrix& rows, v1::SessionResponse* reply) {
  reply->Clear();
  if (ended_) {
    return final_.ok() ? grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                                      "the session is closed")
                       : final_;
  }
  *request_.mutable_append()->mutable_input() = rows;
  if (!stream_->Write(request_)) {
    // The server has ended the stream: its status says why.
    return End(grpc::Status(grpc::StatusCode::INTERNAL,
                            "the session's stream ended before the chunk was sent"));
  }
  if (!stream_->Read(reply)) {
    return End(grpc::Status(grpc::StatusCode::INTERNAL,
                            "the server ended the session OK without answering a chunk"));
  }
  return grpc::Status::OK;
}

grpc::Status AttentionSession::Close() {
  if (ended_) return final_;
  stream_->WritesDone();
  return End(grpc::Status::OK);
}

grpc::Status AttentionSession::End(const grpc::Status& if_ok) {
  // Finish waits for the server's status; replies nobody asked for are read
  // first so that they cannot hold it up, and counted as a protocol error.
  v1::SessionResponse unread;
  int unread_count = 0;
  while (stream_->Read(&unread)) ++unread_count;
  grpc::Status status = stream_->Finish();
  if (status.ok() && unread_count > 0) {
    status = grpc::Status(grpc::StatusCode::INTERNAL,
                          absl::StrCat("the server sent ", unread_count,
                                       " session replies no chunk asked for"));
  } else if (status.ok()) {
    status = if_ok;
  }
  ended_ = true;
  final_ = status;
  return status;
}

}  // namespace attnserve::client
