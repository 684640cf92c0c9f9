// attnctl: the command-line client of attnserve.
//
//   attnctl [global flags] infer (--json FILE | --npy FILE | --random ROWS) [options]
//                                [--protocol v1|v2 [--datatype FP32|BF16|FP16]]
//   attnctl [global flags] models
//   attnctl [global flags] health [--service NAME]
//   attnctl [global flags] bench [-c N] [-n N | -z DURATION] [--rps R] [--lengths 16,128,512 | --data FILE]
//   attnctl [global flags] session --npy FILE --chunk N [--window W] [--weights MODE]
//                                  [--max-tokens N] [--model M] [--verify]
//   attnctl token [[--principal] NAME] [--file FILE]
//
// Global flags (--target, --deadline-ms, --retries, --lb, --tls*, --token)
// go before or after the subcommand: the subcommands hand the flags they do
// not know to the top level (CLI11's fallthrough).
//
// Exit codes: 0 success (health: SERVING); 1 the server answered with an
// error or is not serving (the code and message are printed on stderr);
// 2 bad command line or input file.

#include <CLI/CLI.hpp>

#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <map>
#include <random>
#include <regex>
#include <sstream>
#include <string>
#include <vector>

#include <google/protobuf/util/json_util.h>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "client/attention_client.h"
#include "client/attnctl_session.h"
#include "client/attnctl_util.h"
#include "client/load_generator.h"
#include "client/tensor_io.h"
#include "client/token.h"
#include "client/v2_client.h"

namespace attnserve::client {
namespace {

// Options of a request that the command line may set (they override the
// input file's).
struct RequestFlags {
  std::string model;
  std::string request_id;
  bool causal = false;
  uint32_t window = 0;
  std::string edges;  // "i,j,i,j,..."
  std::string weights = "";  // none | per-head | mean; empty: keep the file's
  std::string pooling = "";  // none | mean | first; empty: keep the file's
  std::string protocol = "v1";    // v1: attnserve.v1.Attention; v2: KServe v2 ModelInfer
  std::string datatype = "FP32";  // v2: how input `input` travels (raw)

  void Register(CLI::App* app) {
    app->add_option("--model", model, "model name (default: the server's default model)");
    app->add_option("--request-id", request_id, "request_id to send (echoed back)");
    app->add_flag("--causal", causal, "causal mask: row i attends only to j <= i");
    app->add_option("--window", window, "local attention: |i - j| <= WINDOW (0 = unlimited)");
    app->add_option("--edges", edges, "graph mask: flat i,j pairs, e.g. 0,1,1,0");
    app->add_option("--weights", weights, "attention weights to return: none, per-head, mean")
        ->check(CLI::IsMember({"none", "per-head", "mean"}));
    app->add_option("--pooling", pooling, "output pooling: none, mean, first")
        ->check(CLI::IsMember({"none", "mean", "first"}));
    app->add_option("--protocol", protocol,
                    "v1 (attnserve.v1.Attention) or v2 (KServe v2 / Open Inference Protocol "
                    "ModelInfer)")
        ->check(CLI::IsMember({"v1", "v2"}))->capture_default_str();
    app->add_option("--datatype", datatype, "v2: input datatype on the wire: FP32, BF16, FP16")
        ->check(CLI::IsMember({"FP32", "BF16", "FP16"}))->capture_default_str();
  }
  bool v2() const { return protocol == "v2"; }

  absl::Status Apply(v1::AttendRequest* r) const {
    if (!model.empty()) r->set_model(model);
    if (!request_id.empty()) r->set_request_id(request_id);
    if (causal) r->mutable_mask()->set_causal(true);
    if (window > 0) r->mutable_mask()->set_window(window);
    if (!edges.empty()) {
      r->mutable_mask()->clear_edges();
      for (absl::string_view part : absl::StrSplit(edges, ',')) {
        uint32_t v = 0;
        if (!absl::SimpleAtoi(part, &v)) {
          return absl::InvalidArgumentError(
              absl::StrCat("--edges: '", std::string(part), "' is not a row index"));
        }
        r->mutable_mask()->add_edges(v);
      }
    }
    static const std::map<std::string, v1::WeightsMode> kWeights = {
        {"none", v1::WEIGHTS_NONE}, {"per-head", v1::WEIGHTS_PER_HEAD}, {"mean", v1::WEIGHTS_MEAN}};
    static const std::map<std::string, v1::Pooling> kPooling = {
        {"none", v1::POOLING_NONE}, {"mean", v1::POOLING_MEAN}, {"first", v1::POOLING_FIRST}};
    if (!weights.empty()) r->set_weights(kWeights.at(weights));
    if (!pooling.empty()) r->set_pooling(kPooling.at(pooling));
    return absl::OkStatus();
  }
};

// The name and d_model of `name` ("" = the default), through v1 ListModels
// or v2 ModelMetadata.
grpc::Status ModelWidth(AttentionClient& client, const RequestFlags& flags, std::string* name,
                        uint32_t* d_model) {
  if (flags.v2()) return V2Client(&client).ModelWidth(flags.model, name, d_model);
  v1::ModelInfo model;
  if (grpc::Status s = FindModel(client, flags.model, &model); !s.ok()) return s;
  *name = model.name();
  *d_model = model.d_model();
  return grpc::Status::OK;
}

// `attnctl infer --protocol v2`: the request as a ModelInferRequest; the
// reply as v2 JSON, or its outputs as PREFIX<name>.npy files.
int InferV2(AttentionClient& client, const v1::AttendRequest& request, const RequestFlags& flags,
            const std::string& npy_prefix) {
  absl::StatusOr<inference::ModelInferRequest> v2_request = ToModelInfer(request, flags.datatype);
  if (!v2_request.ok()) return UsageError(std::string(v2_request.status().message()));
  inference::ModelInferResponse reply;
  if (grpc::Status s = V2Client(&client).ModelInfer(*v2_request, &reply); !s.ok()) {
    return ServerError(s);
  }
  if (npy_prefix.empty()) {
    std::printf("%s\n", ModelInferJson(reply).c_str());
    return kExitOk;
  }
  std::vector<std::string> paths;
  if (absl::Status s = WriteModelInferNpy(reply, npy_prefix, &paths); !s.ok()) {
    return UsageError(std::string(s.message()));
  }
  reply.clear_raw_output_contents();
  std::printf("{\"reply\": %s, \"npy\": [\"%s\"]}\n", ModelInferJson(reply).c_str(),
              absl::StrJoin(paths, "\", \"").c_str());
  return kExitOk;
}

std::string ToJson(const google::protobuf::Message& message) {
  google::protobuf::util::JsonPrintOptions options;
  options.preserve_proto_field_names = true;
  options.always_print_primitive_fields = true;
  std::string out;
  (void)google::protobuf::util::MessageToJsonString(message, &out, options);
  return out;
}

int Infer(AttentionClient& client, const std::string& json_path, const std::string& npy_path,
          uint32_t random_rows, uint32_t seed, size_t index, const RequestFlags& flags,
          const std::string& npy_prefix) {
  v1::AttendRequest request;
  if (!json_path.empty()) {
    absl::StatusOr<std::vector<v1::AttendRequest>> requests = ReadRequestsJson(json_path);
    if (!requests.ok()) return UsageError(std::string(requests.status().message()));
    if (index >= requests->size()) {
      return UsageError(absl::StrCat(json_path, " holds ", requests->size(),
                                     " requests; --index ", index, " is out of range"));
    }
    request = (*requests)[index];
  } else if (!npy_path.empty()) {
    absl::StatusOr<NpyArray> matrix = ReadNpy(npy_path);
    if (!matrix.ok()) return UsageError(std::string(matrix.status().message()));
    if (absl::Status s = SetInput(*matrix, &request); !s.ok()) {
      return UsageError(absl::StrCat(npy_path, ": ", s.message()));
    }
  } else {
    std::string name;
    uint32_t d_model = 0;
    if (grpc::Status s = ModelWidth(client, flags, &name, &d_model); !s.ok()) {
      return ServerError(s);
    }
    std::mt19937 rng(seed);
    request = RandomRequest(rng, random_rows, d_model);
  }
  if (absl::Status s = flags.Apply(&request); !s.ok()) return UsageError(std::string(s.message()));
  if (flags.v2()) return InferV2(client, request, flags, npy_prefix);
  v1::AttendResponse reply;
  if (grpc::Status s = client.Attend(request, &reply); !s.ok()) return ServerError(s);
  if (npy_prefix.empty()) {
    std::printf("%s\n", ToJson(reply).c_str());
    return kExitOk;
  }
  // The matrices go to .npy files; stdout gets the reply without their data.
  const std::string output_path = npy_prefix + "output.npy";
  NpyArray output{{reply.output().rows(), reply.output().cols()},
                  {reply.output().data().begin(), reply.output().data().end()}};
  if (absl::Status s = WriteNpy(output_path, output); !s.ok()) {
    return UsageError(std::string(s.message()));
  }
  reply.mutable_output()->clear_data();
  std::string attention_path;
  if (reply.attention_size() > 0) {
    const uint64_t L = reply.attention(0).rows();
    NpyArray attention{{static_cast<uint64_t>(reply.attention_size()), L, L}, {}};
    for (v1::Matrix& m : *reply.mutable_attention()) {
      attention.data.insert(attention.data.end(), m.data().begin(), m.data().end());
      m.clear_data();
    }
    attention_path = npy_prefix + "attention.npy";
    if (absl::Status s = WriteNpy(attention_path, attention); !s.ok()) {
      return UsageError(std::string(s.message()));
    }
  }
  std::printf("{\"reply\": %s, \"output_npy\": \"%s\", \"attention_npy\": \"%s\"}\n",
              ToJson(reply).c_str(), output_path.c_str(), attention_path.c_str());
  return kExitOk;
}

int Models(AttentionClient& client) {
  v1::ListModelsResponse models;
  if (grpc::Status s = client.ListModels(&models); !s.ok()) return ServerError(s);
  std::printf("%s\n", ToJson(models).c_str());
  return kExitOk;
}

int Health(AttentionClient& client, const std::string& service) {
  grpc::health::v1::HealthCheckResponse::ServingStatus status;
  if (grpc::Status s = client.CheckHealth(service, &status); !s.ok()) return ServerError(s);
  std::printf("%s\n", grpc::health::v1::HealthCheckResponse::ServingStatus_Name(status).c_str());
  return status == grpc::health::v1::HealthCheckResponse::SERVING ? kExitOk : kExitServer;
}

// attnctl load|unload|repository: attnserve.v1.ModelRepository (attnserve
// --model-control explicit; `repository` works in every mode).
int Repository(AttentionClient& client, const std::string& action, const std::string& name) {
  grpc::Status s;
  std::string json;
  if (action == "load") {
    v1::LoadModelResponse response;
    s = client.LoadModel(name, &response);
    json = ToJson(response);
  } else if (action == "unload") {
    s = client.UnloadModel(name);
    json = ToJson(v1::UnloadModelResponse());  // {} as grpcurl prints it
  } else {
    v1::ListRepositoryResponse response;
    s = client.ListRepository(&response);
    json = ToJson(response);
  }
  if (!s.ok()) return ServerError(s);
  std::printf("%s\n", json.c_str());
  return kExitOk;
}

// "10s", "500ms", "2m", or plain seconds ("1.5").
absl::StatusOr<double> ParseDuration(const std::string& text) {
  double value = 0;
  for (auto [suffix, scale] : {std::pair{"ms", 1e-3}, std::pair{"s", 1.0}, std::pair{"m", 60.0},
                               std::pair{"h", 3600.0}}) {
    const std::string s(suffix);
    if (text.size() > s.size() && text.compare(text.size() - s.size(), s.size(), s) == 0 &&
        absl::SimpleAtod(text.substr(0, text.size() - s.size()), &value)) {
      return value * scale;
    }
  }
  if (absl::SimpleAtod(text, &value)) return value;
  return absl::InvalidArgumentError(
      absl::StrCat("'", text, "' is not a duration (e.g. 10s, 500ms, 2m)"));
}

// "16,128,512" (an even mix) or "16:0.7,128:0.2,512:0.1" (weighted): the
// lengths of a 100-request mix in a seeded random order.
absl::StatusOr<std::vector<uint32_t>> ParseLengths(const std::string& text, uint32_t seed) {
  std::vector<std::pair<uint32_t, double>> parts;
  double total = 0;
  for (absl::string_view item : absl::StrSplit(text, ',')) {
    std::vector<std::string> kv = absl::StrSplit(item, ':');
    uint32_t length = 0;
    double weight = 1;
    if (kv.size() > 2 || !absl::SimpleAtoi(kv[0], &length) || length == 0 ||
        (kv.size() == 2 && (!absl::SimpleAtod(kv[1], &weight) || weight <= 0))) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--lengths: '", std::string(item), "' is not LENGTH or LENGTH:WEIGHT (LENGTH >= 1)"));
    }
    parts.emplace_back(length, weight);
    total += weight;
  }
  std::vector<uint32_t> mix;
  for (const auto& [length, weight] : parts) {
    const int copies = std::max(1, static_cast<int>(100 * weight / total + 0.5));
    mix.insert(mix.end(), copies, length);
  }
  std::mt19937 rng(seed);
  std::shuffle(mix.begin(), mix.end(), rng);
  return mix;
}

struct BenchFlags {
  LoadOptions load;
  std::string duration;
  std::string lengths = "128";
  std::string data_path;
  std::string format = "text";
  uint32_t seed = 1;
};

void RegisterBenchFlags(CLI::App* bench_cmd, BenchFlags& bench) {
  bench_cmd->add_option("-c,--concurrency", bench.load.concurrency,
                        "calls in flight (open loop: at most)")->capture_default_str();
  bench_cmd->add_option("-n,--total", bench.load.total,
                        "stop after N calls (default 200 when no -z)");
  bench_cmd->add_option("-z,--duration", bench.duration, "stop after this long, e.g. 30s, 2m");
  bench_cmd->add_option("--rps", bench.load.rps, "open loop at this many calls/s (0: closed loop)");
  bench_cmd->add_option("--connections", bench.load.connections, "HTTP/2 connections to use")
      ->capture_default_str();
  bench_cmd->add_option("--lengths", bench.lengths,
                        "sequence lengths: 16,128,512 (even mix) or 16:0.7,128:0.3 (weighted)")
      ->capture_default_str();
  bench_cmd->add_option("--data", bench.data_path,
                        "JSON file of AttendRequests to send in turn (a ghz data file)");
  bench_cmd->add_option("--seed", bench.seed, "seed of the random inputs")->capture_default_str();
  bench_cmd->add_option("--max-duration", bench.load.max_run_s,
                        "hard bound on the run in seconds")->capture_default_str();
  bench_cmd->add_option("--format", bench.format, "text or json")
      ->check(CLI::IsMember({"text", "json"}))->capture_default_str();
}

int Bench(AttentionClient& client, BenchFlags& bench, const RequestFlags& flags) {
  if (!bench.duration.empty()) {
    absl::StatusOr<double> seconds = ParseDuration(bench.duration);
    if (!seconds.ok()) return UsageError(std::string(seconds.status().message()));
    bench.load.duration_s = *seconds;
  } else if (bench.load.total == 0) {
    bench.load.total = 200;  // as ghz: a bounded run by default
  }
  bench.load.deadline_ms = client.options().deadline_ms;
  std::string model_name;
  uint32_t d_model = 0;
  if (grpc::Status s = ModelWidth(client, flags, &model_name, &d_model); !s.ok()) {
    return ServerError(s);
  }
  std::vector<v1::AttendRequest> requests;
  if (!bench.data_path.empty()) {
    absl::StatusOr<std::vector<v1::AttendRequest>> read = ReadRequestsJson(bench.data_path);
    if (!read.ok()) return UsageError(std::string(read.status().message()));
    requests = *std::move(read);
  } else {
    absl::StatusOr<std::vector<uint32_t>> lengths = ParseLengths(bench.lengths, bench.seed);
    if (!lengths.ok()) return UsageError(std::string(lengths.status().message()));
    std::mt19937 rng(bench.seed);
    std::map<uint32_t, v1::AttendRequest> by_length;  // one input per length
    for (uint32_t L : *lengths) {
      if (!by_length.count(L)) by_length[L] = RandomRequest(rng, L, d_model);
      requests.push_back(by_length[L]);
    }
  }
  std::vector<LoadRequest> mix;
  for (v1::AttendRequest& r : requests) {
    if (absl::Status s = flags.Apply(&r); !s.ok()) return UsageError(std::string(s.message()));
    if (!flags.v2()) {
      mix.push_back(MakeLoadRequest(r, d_model));
      continue;
    }
    absl::StatusOr<LoadRequest> load = MakeV2LoadRequest(r, d_model, flags.datatype);
    if (!load.ok()) return UsageError(std::string(load.status().message()));
    mix.push_back(*std::move(load));
  }
  absl::StatusOr<LoadReport> report = RunLoad(client.options(), bench.load, mix);
  if (!report.ok()) return UsageError(std::string(report.status().message()));
  if (bench.format == "json") {
    std::printf("%s\n", ReportJson(*report).c_str());
  } else {
    std::printf("target %s, model %s%s, %s\n%s", client.options().target.c_str(),
                model_name.c_str(),
                flags.v2() ? absl::StrCat(" (KServe v2, ", flags.datatype, ")").c_str() : "",
                bench.load.rps > 0 ? absl::StrCat("open loop at ", bench.load.rps, " calls/s").c_str()
                                   : absl::StrCat("closed loop, ", bench.load.concurrency,
                                                  " in flight").c_str(),
                ReportText(*report).c_str());
  }
  return report->ok == report->calls ? kExitOk : kExitServer;
}

// `attnctl token`: a new random token on stdout (for the client:
// ATTNCTL_TOKEN, --token, AttentionClient's token) and its `PRINCIPAL
// SHA256HEX` line for the server's --auth-tokens file, appended to `file`
// (created 0600) or, without one, on stderr so the two can be redirected
// apart. The token is printed once and kept nowhere.
int Token(const std::string& principal, const std::string& file) {
  if (absl::Status s = ValidatePrincipal(principal); !s.ok()) {
    return UsageError(std::string(s.message()));
  }
  absl::StatusOr<std::string> token = GenerateToken();
  if (!token.ok()) return UsageError(std::string(token.status().message()));
  if (!file.empty()) {
    if (absl::Status s = AppendTokenLine(file, principal, *token); !s.ok()) {
      return UsageError(std::string(s.message()));
    }
  } else {
    std::fprintf(stderr, "%s\n", TokenFileLine(principal, *token).c_str());
  }
  std::printf("%s\n", token->c_str());
  return kExitOk;
}

// Prints CLI11's answer to a parse error (help included) with every token
// of the command line or the environment masked: CLI11 quotes arguments it
// did not expect, such as a token given without --token.
int ReportParseError(CLI::App& app, const CLI::ParseError& e, int argc, char** argv) {
  std::ostringstream out, err;
  const int code = app.exit(e, out, err);
  std::vector<std::string> secrets;
  if (const char* env = std::getenv("ATTNCTL_TOKEN"); env != nullptr) secrets.push_back(env);
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--token" && i + 1 < argc) secrets.push_back(argv[i + 1]);
    if (absl::StartsWith(arg, "--token=")) secrets.push_back(arg.substr(8));
  }
  std::string out_text = out.str(), err_text = err.str();
  for (const std::string& secret : secrets) {
    if (secret.empty()) continue;
    absl::StrReplaceAll({{secret, "<token>"}}, &out_text);
    absl::StrReplaceAll({{secret, "<token>"}}, &err_text);
  }
  // A token given without its flag (`attnctl models attn_...`) is quoted
  // back as an unexpected argument: mask anything shaped like our tokens.
  static const std::regex kTokenShape(std::string(kTokenPrefix) + "[A-Za-z0-9_-]+");
  out_text = std::regex_replace(out_text, kTokenShape, "<token>");
  err_text = std::regex_replace(err_text, kTokenShape, "<token>");
  std::fputs(out_text.c_str(), stdout);
  std::fputs(err_text.c_str(), stderr);
  return code == 0 ? kExitOk : kExitUsage;
}

// The flags of every subcommand that calls the server, on the top level.
void RegisterGlobalFlags(CLI::App& app, ClientOptions& options) {
  app.add_option("--target", options.target, "server address HOST:PORT, or a gRPC target URI")
      ->envname("ATTNCTL_TARGET")
      ->capture_default_str();
  app.add_option("--deadline-ms", options.deadline_ms,
                 "deadline of each call (a session's stream has none)")
      ->capture_default_str();
  app.add_option("--retries", options.max_retries, "retries after UNAVAILABLE (only)")
      ->capture_default_str();
  app.add_option("--lb", options.load_balancing, "load balancing: pick_first or round_robin")
      ->check(CLI::IsMember({"pick_first", "round_robin"}))
      ->capture_default_str();
  app.add_flag("--tls", options.tls,
               "use TLS (system roots unless --tls-ca; implied by any other --tls-* flag)");
  app.add_option("--tls-ca", options.tls_root_certs_path,
                 "PEM file of the root certificates that sign the server's");
  app.add_option("--tls-cert", options.tls_client_cert_path,
                 "PEM client certificate chain, for servers that require one (mTLS)");
  app.add_option("--tls-key", options.tls_client_key_path, "PEM private key of --tls-cert");
  app.add_option("--tls-server-name", options.tls_server_name,
                 "name the server's certificate must carry when it is not the target's host");
  // No default shown and never printed: the value is a secret.
  app.add_option("--token", options.token,
                 "bearer token sent on every call (prefer the environment variable: "
                 "command lines are visible to other users)")
      ->envname("ATTNCTL_TOKEN");
  const std::string footer =
      "Global flags (--target, --deadline-ms, --retries, --lb, --tls, --tls-ca, --tls-cert, "
      "--tls-key, --tls-server-name, --token) go before or after the subcommand; see "
      "attnctl --help.";
  app.footer(footer);
  // Subcommands made after this hand unknown flags to the top level.
  app.fallthrough();
}

int Main(int argc, char** argv) {
  CLI::App app{"attnctl: call attnserve (infer, models, health, session), manage its models "
               "(load, unload, repository), load-test it (bench), make tokens (token)."};
  app.require_subcommand(1);
  ClientOptions options;
  RegisterGlobalFlags(app, options);

  CLI::App* infer = app.add_subcommand("infer", "send one request; print the reply as JSON");
  std::string json_path, npy_path, npy_prefix;
  uint32_t random_rows = 0, seed = 1;
  size_t index = 0;
  RequestFlags infer_flags;
  auto* inputs = infer->add_option_group("input", "where the input comes from");
  inputs->add_option("--json", json_path,
                     "JSON file: an AttendRequest (protobuf JSON), an array of them, or a matrix");
  inputs->add_option("--npy", npy_path, "2-D float32 .npy file: the input rows");
  inputs->add_option("--random", random_rows, "ROWS random rows of the model's d_model");
  inputs->require_option(1);
  infer->add_option("--index", index, "which request of a JSON array to send")->capture_default_str();
  infer->add_option("--seed", seed, "seed of --random")->capture_default_str();
  infer->add_option("--output-npy", npy_prefix,
                    "write PREFIXoutput.npy (and PREFIXattention.npy: heads x L x L) "
                    "instead of printing the matrices");
  infer_flags.Register(infer);

  app.add_subcommand("models", "list the served models as JSON");
  CLI::App* health = app.add_subcommand(
      "health", "print the serving status; exit 0 only when SERVING (usable as a probe)");
  std::string service;
  health->add_option("--service", service, "a model name; empty: the whole server");

  std::string model_name;
  CLI::App* load_cmd = app.add_subcommand(
      "load", "load or update a model of the server's repository (--model-control explicit)");
  load_cmd->add_option("model", model_name, "the model's directory name")->required();
  CLI::App* unload_cmd = app.add_subcommand(
      "unload", "unload a model once it answered what it accepted (--model-control explicit)");
  unload_cmd->add_option("model", model_name, "the model's name")->required();
  CLI::App* repository_cmd = app.add_subcommand(
      "repository", "list the repository's models: state, version, last load error (JSON)");

  CLI::App* bench_cmd = app.add_subcommand("bench", "load generator: throughput and latency");
  BenchFlags bench;
  RequestFlags bench_flags;
  RegisterBenchFlags(bench_cmd, bench);
  bench_flags.Register(bench_cmd);

  CLI::App* session_cmd = app.add_subcommand(
      "session", "stream a .npy file's rows through an Attention.Session a chunk at a time: "
                 "one line per chunk, latency percentiles; --verify checks every chunk against "
                 "a one-shot Attend");
  SessionFlags session_flags;
  RegisterSessionFlags(session_cmd, session_flags);

  CLI::App* token_cmd = app.add_subcommand(
      "token", "make a random bearer token: the token on stdout (for clients), its "
               "'PRINCIPAL SHA256HEX' line for attnserve --auth-tokens on stderr or --file");
  std::string principal = "client", token_file;
  token_cmd->add_option("principal,--principal", principal,
                        "who the token is for: the principal of authorization policies")
      ->capture_default_str();
  token_cmd->add_option("--file", token_file,
                        "append the line to this token file (created with mode 0600) "
                        "instead of printing it on stderr");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return ReportParseError(app, e, argc, argv);
  }
  if (*token_cmd) return Token(principal, token_file);
  // A CA, client certificate or server name only makes sense over TLS.
  if (!options.tls_root_certs_path.empty() || !options.tls_client_cert_path.empty() ||
      !options.tls_client_key_path.empty() || !options.tls_server_name.empty()) {
    options.tls = true;
  }
  if (!options.token.empty() && !options.tls) {
    std::fprintf(stderr,
                 "attnctl: warning: sending the token without TLS; anyone on the path can "
                 "read it (use --tls)\n");
  }
  absl::StatusOr<std::unique_ptr<AttentionClient>> client = AttentionClient::Create(options);
  if (!client.ok()) return UsageError(std::string(client.status().message()));
  if (*infer) {
    return Infer(**client, json_path, npy_path, random_rows, seed, index, infer_flags, npy_prefix);
  }
  if (*health) return Health(**client, service);
  if (*load_cmd) return Repository(**client, "load", model_name);
  if (*unload_cmd) return Repository(**client, "unload", model_name);
  if (*repository_cmd) return Repository(**client, "list", "");
  if (*bench_cmd) return Bench(**client, bench, bench_flags);
  if (*session_cmd) return RunSession(**client, session_flags);
  return Models(**client);
}

}  // namespace
}  // namespace attnserve::client

int main(int argc, char** argv) { return attnserve::client::Main(argc, argv); }
