#include "client/attnctl_session.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <limits>
#include <map>
#include <optional>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "client/attnctl_util.h"
#include "client/tensor_io.h"

namespace attnserve::client {
namespace {

using Clock = std::chrono::steady_clock;
constexpr double kInfinity = std::numeric_limits<double>::infinity();

double Milliseconds(Clock::duration d) {
  return std::chrono::duration<double, std::milli>(d).count();
}

// Nearest rank, as attnctl bench reports them; 0 when empty.
double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(p * v.size()))];
}

// ||got - want|| / ||want||; the absolute error when `want` is all zeros.
double RelativeL2(const std::vector<float>& got, const std::vector<float>& want) {
  double diff = 0, norm = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    diff += (double{got[i]} - want[i]) * (double{got[i]} - want[i]);
    norm += double{want[i]} * want[i];
  }
  return norm > 0 ? std::sqrt(diff / norm) : std::sqrt(diff);
}

// --verify: a chunk's output rows, and its attention weights when the
// session asked for them, against the last rows of a one-shot Attend of the
// rows so far with mask {causal, window}. An Attend of a model with
// positions ends at max_length; past it only a model without positions
// (whose outputs do not depend on where the rows start) can still be checked,
// on its last window + n rows. Thread-compatible.
class ChunkVerifier {
 public:
  ChunkVerifier(AttentionClient& client, const v1::ModelInfo& model, const NpyArray& input,
                uint32_t window, v1::WeightsMode weights)
      : client_(client), model_(model), input_(input), window_(window), weights_(weights) {}

  // The tolerance of relative L2 errors: bf16 computes with 8-bit mantissas.
  double tolerance() const { return model_.precision() == "bf16" ? 2e-2 : 1e-5; }

  // The chunk of `n` rows that should start at `position`: its worst
  // relative L2 error in *error, or nullopt once verification has stopped
  // (the reason printed once). Errors: the verifying Attend's.
  grpc::Status Check(const v1::SessionResponse& reply, uint64_t position, uint32_t n,
                     std::optional<double>* error) {
    *error = std::nullopt;
    const uint64_t end = position + n;
    uint64_t begin = 0;
    if (end > model_.max_length() && model_.positional() != "none") {
      if (!stopped_) {
        std::fprintf(stderr,
                     "verify: stopped at position %llu: a one-shot Attend of model %s ends at "
                     "its max_length %u (%s positions), and only a model without positions "
                     "can be checked on its last window + n rows\n",
                     static_cast<unsigned long long>(end - 1), model_.name().c_str(),
                     model_.max_length(), model_.positional().c_str());
      }
      stopped_ = true;
      return grpc::Status::OK;
    }
    if (end > model_.max_length() && window_ > 0 && end > uint64_t{window_} + n) {
      begin = end - window_ - n;
    }
    if (reply.position() != position) {
      std::fprintf(stderr, "verify: the reply says position %llu; %llu rows were sent before\n",
                   static_cast<unsigned long long>(reply.position()),
                   static_cast<unsigned long long>(position));
      *error = kInfinity;
      return grpc::Status::OK;
    }
    v1::AttendResponse want;
    if (grpc::Status s = Attend(begin, end, &want); !s.ok()) return s;
    const double output = OutputError(reply, want, n);
    const double weights = WeightsError(reply, want, begin, position, n);
    *error = std::isnan(output) || std::isnan(weights) ? output + weights
                                                       : std::max(output, weights);
    return grpc::Status::OK;
  }

 private:
  grpc::Status Attend(uint64_t begin, uint64_t end, v1::AttendResponse* reply) {
    const uint64_t d = input_.shape[1];
    v1::AttendRequest request;
    request.set_model(model_.name());
    request.mutable_input()->set_rows(static_cast<uint32_t>(end - begin));
    request.mutable_input()->set_cols(static_cast<uint32_t>(d));
    request.mutable_input()->mutable_data()->Assign(input_.data.begin() + begin * d,
                                                    input_.data.begin() + end * d);
    request.mutable_mask()->set_causal(true);
    request.mutable_mask()->set_window(window_);
    request.set_weights(weights_);
    return client_.Attend(request, reply);
  }

  double OutputError(const v1::SessionResponse& reply, const v1::AttendResponse& want,
                     uint32_t n) const {
    const uint64_t d = input_.shape[1];
    if (static_cast<uint64_t>(want.output().data_size()) < n * d) {
      std::fprintf(stderr, "verify: the one-shot reply has fewer than %u rows\n", n);
      return kInfinity;
    }
    if (reply.output().rows() != n || reply.output().cols() != d ||
        static_cast<uint64_t>(reply.output().data_size()) != n * d) {
      std::fprintf(stderr, "verify: the chunk's output is %u x %u; expected %u x %llu\n",
                   reply.output().rows(), reply.output().cols(), n,
                   static_cast<unsigned long long>(d));
      return kInfinity;
    }
    const auto last = want.output().data().end();
    return RelativeL2({reply.output().data().begin(), reply.output().data().end()},
                      {last - static_cast<int64_t>(n * d), last});
  }

  // Chunk row r, key k (absolute position first_key + k) is row
  // position + r, column first_key + k of the one-shot reply, both less
  // `begin`, the position of its first row.
  double WeightsError(const v1::SessionResponse& reply, const v1::AttendResponse& want,
                      uint64_t begin, uint64_t position, uint32_t n) const {
    if (weights_ == v1::WEIGHTS_NONE) return 0;
    const uint64_t keys = position + n - reply.first_key();
    if (reply.attention_size() == 0 || reply.attention_size() != want.attention_size() ||
        reply.first_key() < begin || reply.first_key() > position) {
      std::fprintf(stderr,
                   "verify: the chunk has %d attention matrices from key %llu; expected %d "
                   "from a key in [%llu, %llu]\n",
                   reply.attention_size(), static_cast<unsigned long long>(reply.first_key()),
                   want.attention_size(), static_cast<unsigned long long>(begin),
                   static_cast<unsigned long long>(position));
      return kInfinity;
    }
    const uint64_t length = position + n - begin;  // of the one-shot sequence
    std::vector<float> got, expected;
    for (int h = 0; h < reply.attention_size(); ++h) {
      const v1::Matrix& m = reply.attention(h);
      if (static_cast<uint64_t>(want.attention(h).data_size()) != length * length) {
        std::fprintf(stderr, "verify: the one-shot attention matrix %d is not %llu x %llu\n", h,
                     static_cast<unsigned long long>(length),
                     static_cast<unsigned long long>(length));
        return kInfinity;
      }
      if (m.rows() != n || m.cols() != keys || static_cast<uint64_t>(m.data_size()) != n * keys) {
        std::fprintf(stderr, "verify: attention matrix %d is %u x %u; expected %u x %llu\n", h,
                     m.rows(), m.cols(), n, static_cast<unsigned long long>(keys));
        return kInfinity;
      }
      got.insert(got.end(), m.data().begin(), m.data().end());
      for (uint64_t r = 0; r < n; ++r) {
        const float* row = want.attention(h).data().data() + (position - begin + r) * length;
        expected.insert(expected.end(), row + (reply.first_key() - begin),
                        row + (position + n - begin));
      }
    }
    return RelativeL2(got, expected);
  }

  AttentionClient& client_;
  const v1::ModelInfo model_;
  const NpyArray& input_;
  const uint32_t window_;
  const v1::WeightsMode weights_;
  bool stopped_ = false;
};

// What the summary reports, gathered chunk by chunk.
struct Tally {
  std::vector<double> latencies_ms;
  uint64_t chunks = 0, verified = 0;
  double worst = 0;  // relative L2 error; NaN once any was NaN
  bool mismatch = false;
};

// Appends the rows of `input` `chunk_rows` at a time, printing a line per
// chunk: where it went, how long it took, the server's queue and compute
// time and, with a verifier, its error. Errors: the session's or the
// verifying Attend's.
grpc::Status StreamChunks(AttentionSession& session, const NpyArray& input, uint32_t chunk_rows,
                          ChunkVerifier* verifier, Tally* tally) {
  const uint64_t rows = input.shape[0], cols = input.shape[1];
  v1::Matrix chunk;
  v1::SessionResponse reply;
  for (uint64_t first = 0; first < rows; first += chunk_rows, ++tally->chunks) {
    const auto n = static_cast<uint32_t>(std::min<uint64_t>(chunk_rows, rows - first));
    chunk.set_rows(n);
    chunk.set_cols(static_cast<uint32_t>(cols));
    chunk.mutable_data()->Assign(input.data.begin() + first * cols,
                                 input.data.begin() + (first + n) * cols);
    const Clock::time_point sent = Clock::now();
    if (grpc::Status s = session.Append(chunk, &reply); !s.ok()) return s;
    tally->latencies_ms.push_back(Milliseconds(Clock::now() - sent));
    std::string line = absl::StrFormat(
        "chunk %d: position %d, rows %d, %.3f ms (server: queue %.3f ms, compute %.3f ms)",
        tally->chunks, reply.position(), n, tally->latencies_ms.back(),
        reply.stats().queue_us() / 1e3, reply.stats().compute_us() / 1e3);
    std::optional<double> error;
    if (verifier != nullptr) {
      if (grpc::Status s = verifier->Check(reply, first, n, &error); !s.ok()) return s;
    }
    if (error.has_value()) {
      ++tally->verified;
      // The worst so far; a NaN, once seen, stays the worst.
      if (!std::isnan(tally->worst) && !(*error <= tally->worst)) tally->worst = *error;
      const bool bad = !(*error <= verifier->tolerance());
      tally->mismatch |= bad;
      absl::StrAppendFormat(&line, ", error %.2e%s", *error, bad ? " MISMATCH" : "");
    }
    std::printf("%s\n", line.c_str());
  }
  return grpc::Status::OK;
}

void PrintOpened(const AttentionSession& session) {
  const v1::SessionOpened& opened = session.opened();
  std::printf("session %s: model %s (version %s), d_model %u, window %u, max_tokens %llu, "
              "cache %u rows (%llu bytes)\n",
              session.session_id().c_str(), opened.model().c_str(), opened.version().c_str(),
              opened.d_model(), opened.window(),
              static_cast<unsigned long long>(opened.max_tokens()), opened.cache_rows(),
              static_cast<unsigned long long>(opened.cache_bytes()));
}

}  // namespace

void RegisterSessionFlags(CLI::App* command, SessionFlags& flags) {
  command->add_option("--npy", flags.npy_path, "2-D float32 .npy file: the rows to stream")
      ->required();
  command->add_option("--chunk", flags.chunk_rows,
                      "rows per append (the last chunk may be shorter)")
      ->required()
      ->check(CLI::PositiveNumber);
  command->add_option("--window", flags.window,
                      "each row attends to itself and the WINDOW rows before it (0 = every "
                      "earlier row)")
      ->capture_default_str();
  command->add_option("--weights", flags.weights,
                      "attention weights in each chunk's reply: none, per-head, mean")
      ->check(CLI::IsMember({"none", "per-head", "mean"}))
      ->capture_default_str();
  command->add_option("--max-tokens", flags.max_tokens,
                      "most rows the session may append (0 = no limit of its own)")
      ->capture_default_str();
  command->add_option("--model", flags.model, "model name (default: the server's default model)");
  command->add_flag("--verify", flags.verify,
                    "check each chunk against a one-shot Attend of the rows so far (mask causal "
                    "+ window); exit 1 on a mismatch");
}

int RunSession(AttentionClient& client, const SessionFlags& flags) {
  absl::StatusOr<NpyArray> input = ReadNpy(flags.npy_path);
  if (!input.ok()) return UsageError(std::string(input.status().message()));
  if (input->shape.size() != 2 || input->shape[0] == 0 || input->shape[1] == 0) {
    return UsageError(absl::StrCat(flags.npy_path, ": expected rows x d_model with rows >= 1; "
                                   "shape is (", absl::StrJoin(input->shape, ", "), ")"));
  }
  static const std::map<std::string, v1::WeightsMode> kWeights = {
      {"none", v1::WEIGHTS_NONE}, {"per-head", v1::WEIGHTS_PER_HEAD}, {"mean", v1::WEIGHTS_MEAN}};
  v1::SessionOpen open;
  open.set_model(flags.model);
  open.set_window(flags.window);
  open.set_weights(kWeights.at(flags.weights));
  open.set_max_tokens(flags.max_tokens);

  const Clock::time_point start = Clock::now();
  absl::StatusOr<std::unique_ptr<AttentionSession>> session = client.OpenSession(open);
  if (!session.ok()) return ServerError(session.status());
  const v1::SessionOpened& opened = (*session)->opened();
  PrintOpened(**session);
  std::optional<ChunkVerifier> verifier;
  if (flags.verify) {
    v1::ModelInfo model;
    if (grpc::Status s = FindModel(client, opened.model(), &model); !s.ok()) {
      return ServerError(s);
    }
    verifier.emplace(client, model, *input, opened.window(), open.weights());
  }

  Tally tally;
  if (grpc::Status s = StreamChunks(**session, *input, flags.chunk_rows,
                                    verifier.has_value() ? &*verifier : nullptr, &tally);
      !s.ok()) {
    return ServerError(s);
  }
  if (grpc::Status s = (*session)->Close(); !s.ok()) return ServerError(s);
  std::printf("%llu chunks, %llu rows in %.1f ms: latency p50 %.3f ms, p99 %.3f ms\n",
              static_cast<unsigned long long>(tally.chunks),
              static_cast<unsigned long long>(input->shape[0]),
              Milliseconds(Clock::now() - start), Percentile(tally.latencies_ms, 0.5),
              Percentile(tally.latencies_ms, 0.99));
  if (!verifier.has_value()) return kExitOk;
  std::printf("verify: %llu of %llu chunks checked, worst relative L2 error %.2e "
              "(tolerance %.0e): %s\n",
              static_cast<unsigned long long>(tally.verified),
              static_cast<unsigned long long>(tally.chunks), tally.worst, verifier->tolerance(),
              tally.mismatch ? "MISMATCH" : "OK");
  return tally.mismatch ? kExitServer : kExitOk;
}

}  // namespace attnserve::client
