// AttentionClient: a small synchronous client for attnserve over the
// generated stub — one channel, a deadline on every call, retries for
// UNAVAILABLE only, TLS (and client certificates for mTLS) and a bearer
// token on every call. Thread-safe: calls may come from any number of threads.
// AttentionSession: one open Attention.Session stream (incremental causal
// attention with the keys and values kept on the server). Thread-compatible:
// one thread at a time uses a session; distinct sessions need no locking.
#ifndef ATTNSERVE_CLIENT_ATTENTION_CLIENT_H_
#define ATTNSERVE_CLIENT_ATTENTION_CLIENT_H_

#include <cstdint>
#include <memory>
#include <string>

#include <grpcpp/grpcpp.h>

#include "absl/status/statusor.h"
#include "attnserve/v1/attention.grpc.pb.h"
#include "attnserve/v1/model_repository.grpc.pb.h"
#include "grpc/health/v1/health.grpc.pb.h"

namespace attnserve::client {

struct ClientOptions {
  // "host:port", or any gRPC target ("dns:///attnserve-grpc:50051" with
  // load_balancing "round_robin" spreads calls over every pod of a headless
  // Service).
  std::string target = "127.0.0.1:50051";
  // Per call, from the moment it is made (each retry gets a fresh one).
  int64_t deadline_ms = 30000;
  // Extra attempts after an UNAVAILABLE reply (a draining or restarting
  // server, a connection refused): 0 = never retry. No other code is retried:
  // they mean the request itself is wrong, or it may already have run.
  int max_retries = 2;
  // Wait before the first retry; doubled for each further one.
  int64_t retry_backoff_ms = 100;
  // "pick_first" (gRPC's default) or "round_robin".
  std::string load_balancing = "pick_first";
  // Largest reply accepted (PER_HEAD weights of long sequences are large).
  int64_t max_receive_message_bytes = int64_t{256} << 20;

  // TLS (attnserve --tls-cert/--tls-key): when `tls` is set the channel uses
  // SSL credentials with these PEM files; an empty root path means the system
  // roots. A client certificate and key (both or neither) answer a server
  // that requires them (--tls-client-ca, mTLS). Setting a path without `tls`
  // is an error, never a silent plaintext connection.
  bool tls = false;
  std::string tls_root_certs_path;
  std::string tls_client_cert_path;
  std::string tls_client_key_path;
  // The name the server's certificate must carry (and the SNI sent) when it
  // differs from the target's host, e.g. a target by IP address or through a
  // tunnel. Empty: the target's host.
  std::string tls_server_name;

  // Bearer token (attnserve --auth-tokens): sent as `authorization: Bearer
  // TOKEN` on every call, health checks included. Empty: none. Visible ASCII
  // only (it is an HTTP/2 header value). Never logged, and never part of an
  // error message of this library. Send it over TLS: on a plaintext
  // connection anyone on the path can read it.
  std::string token;
};

// Adds what every call of `options` carries to `context`: the bearer token,
// if any. For callers that make their own calls on MakeChannel's channel
// (the load generator).
void AddCallMetadata(const ClientOptions& options, grpc::ClientContext* context);

class AttentionSession;

class AttentionClient {
 public:
  // Errors: INVALID_ARGUMENT for bad options (empty target, negative
  // deadline or retries, unknown load_balancing, unreadable TLS files, TLS
  // paths without tls, a certificate without its key, a token that cannot
  // be a header value).
  // Connecting is lazy: an unreachable server shows as UNAVAILABLE on calls.
  static absl::StatusOr<std::unique_ptr<AttentionClient>> Create(const ClientOptions& options);

  // Attention.Attend, retried on UNAVAILABLE as the options say. *attempts,
  // when given, receives how many calls were made.
  grpc::Status Attend(const v1::AttendRequest& request, v1::AttendResponse* response,
                      int* attempts = nullptr);
  // Attention.ListModels, retried the same way.
  grpc::Status ListModels(v1::ListModelsResponse* response);
  // grpc.health.v1.Health/Check for `service` ("" = the whole server, or a
  // model name). Not retried: a probe wants the answer of now.
  grpc::Status CheckHealth(const std::string& service,
                           grpc::health::v1::HealthCheckResponse::ServingStatus* status);
  // attnserve.v1.ModelRepository (attnserve --model-control explicit). Not
  // retried: a load or unload is an operator's action, answered once.
  grpc::Status LoadModel(const std::string& name, v1::LoadModelResponse* response);
  grpc::Status UnloadModel(const std::string& name);
  grpc::Status ListRepository(v1::ListRepositoryResponse* response);

  // Opens an Attention.Session with `open` as its first message and waits
  // for the server's SessionOpened. The stream carries the token and TLS of
  // every call, but NO deadline (a session may live for hours:
  // options().deadline_ms does not apply to it; the server's idle timeout
  // bounds it), and is never retried (its state lives on the server: a new
  // stream is a new, empty session). Errors: the server's status (code and
  // message) when it refuses the open, e.g. NOT_FOUND for an unknown model,
  // RESOURCE_EXHAUSTED when no cache fits, UNAUTHENTICATED; UNAVAILABLE
  // when it cannot be reached. Blocks until the server answers.
  absl::StatusOr<std::unique_ptr<AttentionSession>> OpenSession(const v1::SessionOpen& open);

  const ClientOptions& options() const { return options_; }
  const std::shared_ptr<grpc::Channel>& channel() const { return channel_; }

 private:
  AttentionClient(const ClientOptions& options, std::shared_ptr<grpc::Channel> channel);
  std::unique_ptr<grpc::ClientContext> NewContext() const;
  template <typename Call>
  grpc::Status WithRetries(Call call, int* attempts);

  // Constant after construction.
  const ClientOptions options_;
  const std::shared_ptr<grpc::Channel> channel_;
  const std::unique_ptr<v1::Attention::Stub> stub_;
  const std::unique_ptr<grpc::health::v1::Health::Stub> health_;
  const std::unique_ptr<v1::ModelRepository::Stub> repository_;
};

// An open Attention.Session: Append sends one chunk and waits for its reply
// (replies come in order, one per chunk); Close half-closes and returns how
// the server ended the stream. Once the stream has ended (an error from the
// server, or Close), Close returns that final status again, and Append
// returns it too, or FAILED_PRECONDITION when the session was closed OK.
// Destroying a session that is still open cancels its stream (the server
// frees its cache). It holds its channel: it may outlive the AttentionClient
// that opened it. Thread-compatible (see the top of this file).
class AttentionSession {
 public:
  ~AttentionSession();
  AttentionSession(const AttentionSession&) = delete;
  AttentionSession& operator=(const AttentionSession&) = delete;

  // The server's answer to the open: model, version, d_model, window,
  // max_tokens and the cache it reserved.
  const v1::SessionOpened& opened() const { return opened_; }
  // The session_id every reply carries (the server's when the open left it
  // empty).
  const std::string& session_id() const { return session_id_; }

  // Appends `rows` (n x d_model) and waits for its reply: *reply holds the
  // chunk's position, output rows, attention weights and stats. When the
  // server ends the stream instead (a bad chunk: INVALID_ARGUMENT; past
  // max_tokens or max_length: OUT_OF_RANGE; idle too long:
  // DEADLINE_EXCEEDED; draining: UNAVAILABLE, after every chunk it had
  // received was answered), returns its status, code and message as sent.
  // No deadline of its own: it blocks until the server answers or ends the
  // stream.
  grpc::Status Append(const v1::Matrix& rows, v1::SessionResponse* reply);
  // Half-closes and waits for the server to end the stream: OK for a
  // session ended cleanly, else the server's status. Replies to no chunk
  // are expected after the half-close; one would be INTERNAL.
  grpc::Status Close();

 private:
  friend class AttentionClient;
  using Stream = grpc::ClientReaderWriter<v1::SessionRequest, v1::SessionResponse>;
  AttentionSession() = default;
  // REQUIRES: !ended_. Reads whatever the server still sends, then its
  // final status; keeps it in final_ and returns it. A server that ended
  // the stream OK yields `if_ok` instead: OK for a Close, an error where a
  // reply was due.
  grpc::Status End(const grpc::Status& if_ok);

  // Set by OpenSession, then constant.
  grpc::ClientContext context_;
  std::unique_ptr<Stream> stream_;
  v1::SessionOpened opened_;
  std::string session_id_;

  bool ended_ = false;          // the stream is over: final_ holds its status
  grpc::Status final_;
  v1::SessionRequest request_;  // reused by every Append: its input's buffer is kept
};

// Creates the channel AttentionClient uses: credentials, load balancing and
// message size from `options` (validated as Create does; the same errors).
// Calls on it carry no token by themselves: give each call's context
// AddCallMetadata. `index` > 0 gives a
// channel that never shares its connection with others (load generators use
// several connections).
absl::StatusOr<std::shared_ptr<grpc::Channel>> MakeChannel(const ClientOptions& options,
                                                           int index = 0);

}  // namespace attnserve::client

#endif  // ATTNSERVE_CLIENT_ATTENTION_CLIENT_H_
