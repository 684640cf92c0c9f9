#include "tests/e2e_util.h"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <future>

#include <google/protobuf/unknown_field_set.h>
#include <grpcpp/generic/generic_stub.h>
#include <prometheus/registry.h>

#include "absl/strings/str_cat.h"
#include "core/model.h"
#include "tests/test_util.h"

extern char** environ;

namespace attnserve::testing {

server::ServerOptions LoopbackOptions(const std::string& repository) {
  server::ServerOptions o;
  o.host = "127.0.0.1";
  o.port = 0;
  o.metrics_port = 0;
  o.metrics_host = "127.0.0.1";
  o.model_repository = repository;
  o.log_level = "warn";
  return o;
}


// ---- Clients, oracle, raw health/reflection calls, child processes. ----

std::string GoldenRepository() { return SourcePath("tests/golden/data"); }

std::unique_ptr<server::AttnServer> StartLoopbackServer(const server::ServerOptions& options) {
  auto server = server::AttnServer::Start(options);
  if (!server.ok()) {
    ADD_FAILURE() << "AttnServer::Start: " << server.status();
    return nullptr;
  }
  return *std::move(server);
}

grpc::Status CallAttend(v1::Attention::Stub& stub, const v1::AttendRequest& request,
                        v1::AttendResponse* reply, int64_t deadline_ms) {
  grpc::ClientContext context;
  context.set_deadline(DeadlineIn(deadline_ms));
  return stub.Attend(&context, request, reply);
}

std::string LoopbackTarget(int port) { return absl::StrCat("127.0.0.1:", port); }

std::shared_ptr<grpc::Channel> LoopbackChannel(int port, int index) {
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  args.SetInt("attnserve.test.channel_index", index);  // keeps channels apart
  args.SetMaxReceiveMessageSize(64 << 20);
  return grpc::CreateCustomChannel(LoopbackTarget(port), grpc::InsecureChannelCredentials(),
                                   args);
}

std::chrono::system_clock::time_point DeadlineIn(int64_t ms) {
  return std::chrono::system_clock::now() + std::chrono::milliseconds(ms);
}

bool WaitFor(const std::function<bool()>& condition, std::chrono::milliseconds timeout) {
  const auto end = std::chrono::steady_clock::now() + timeout;
  while (!condition()) {
    if (std::chrono::steady_clock::now() >= end) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return true;
}

v1::AttendRequest RandomRequest(std::mt19937& rng, const std::string& model, uint32_t d_model,
                                uint32_t length) {
  v1::AttendRequest request;
  request.set_model(model);
  v1::Matrix* input = request.mutable_input();
  input->set_rows(length);
  input->set_cols(d_model);
  const std::vector<float> data = RandomVector(rng, size_t{length} * d_model, 1.0f);
  input->mutable_data()->Add(data.begin(), data.end());
  return request;
}

v1::AttendRequest SmallRequest() {
  v1::AttendRequest r;
  r.mutable_input()->set_rows(2);
  r.mutable_input()->set_cols(3);
  for (int i = 0; i < 6; ++i) r.mutable_input()->add_data(0.5f * i);
  return r;
}

v1::AttendRequest RandomMixedRequest(std::mt19937& rng, int variant, const std::string& model,
                                     uint32_t d_model, uint32_t max_length) {
  const uint32_t length = 1 + rng() % max_length;
  v1::AttendRequest request = RandomRequest(rng, model, d_model, length);
  v1::Mask* mask = request.mutable_mask();
  switch (variant % 5) {
    case 0:  // no mask
      break;
    case 1:
      mask->set_causal(true);
      break;
    case 2:
      mask->set_window(1 + rng() % 4);
      break;
    case 3:  // rules combine
      mask->set_causal(true);
      mask->set_window(1 + rng() % 3);
      break;
    case 4:  // a random graph
      for (uint32_t e = 0; e < 2 * length; ++e) {
        mask->add_edges(rng() % length);
        mask->add_edges(rng() % length);
      }
      break;
  }
  request.set_weights(static_cast<v1::WeightsMode>(variant % 3));
  request.set_pooling(static_cast<v1::Pooling>((variant / 3) % 3));
  return request;
}

ReferenceOracle::ReferenceOracle(const std::string& repository) {
  for (const auto& entry : std::filesystem::directory_iterator(repository)) {
    if (!entry.is_directory()) continue;
    absl::StatusOr<core::Model> model = core::LoadModel(entry.path().string());
    if (!model.ok()) {
      ADD_FAILURE() << "cannot load " << entry.path() << ": " << model.status();
      continue;
    }
    const std::string name = model->name;
    auto engine = core::CreateReferenceEngine(std::make_shared<const core::Model>(*std::move(model)));
    if (!engine.ok()) {
      ADD_FAILURE() << "no reference engine for " << name << ": " << engine.status();
      continue;
    }
    engines_[name] = *std::move(engine);
  }
}

const core::ModelConfig& ReferenceOracle::config(const std::string& name) const {
  return engines_.at(name)->model().config;
}

::testing::AssertionResult ReferenceOracle::Matches(const std::string& model,
                                                    const v1::AttendRequest& request,
                                                    const v1::AttendResponse& reply,
                                                    double tolerance) const {
  auto it = engines_.find(model);
  if (it == engines_.end()) return ::testing::AssertionFailure() << "no model " << model;
  const uint32_t d = it->second->model().config.d_model;
  const uint32_t length = request.input().rows();
  core::SequenceInput seq;
  seq.data = std::span<const float>(request.input().data().data(), request.input().data_size());
  seq.length = length;
  seq.mask.causal = request.mask().causal();
  seq.mask.window = request.mask().window();
  seq.mask.edges.assign(request.mask().edges().begin(), request.mask().edges().end());
  seq.weights = static_cast<core::WeightsMode>(request.weights());
  seq.pooling = static_cast<core::Pooling>(request.pooling());
  auto out = it->second->Run(std::span<const core::SequenceInput>(&seq, 1));
  if (!out.ok()) return ::testing::AssertionFailure() << "reference failed: " << out.status();
  const core::SequenceOutput& want = (*out)[0];
  const std::string id = absl::StrCat("request ", reply.request_id(), " (model ", model,
                                      ", L=", length, "): ");
  const v1::Matrix& got = reply.output();
  if (got.rows() != want.rows || got.cols() != d) {
    return ::testing::AssertionFailure() << id << "output is " << got.rows() << " x "
                                         << got.cols() << "; expected " << want.rows << " x " << d;
  }
  const double err = RelativeL2(std::vector<float>(got.data().begin(), got.data().end()), want.output);
  if (!(err <= tolerance)) {
    return ::testing::AssertionFailure() << id << "output relative L2 " << err << " > " << tolerance;
  }
  if (static_cast<size_t>(reply.attention_size()) != want.attention.size()) {
    return ::testing::AssertionFailure() << id << reply.attention_size()
                                         << " attention matrices; expected " << want.attention.size();
  }
  for (int h = 0; h < reply.attention_size(); ++h) {
    const v1::Matrix& a = reply.attention(h);
    if (a.rows() != length || a.cols() != length) {
      return ::testing::AssertionFailure() << id << "attention " << h << " is " << a.rows()
                                           << " x " << a.cols() << "; expected L x L";
    }
    const double e = RelativeL2(std::vector<float>(a.data().begin(), a.data().end()), want.attention[h]);
    if (!(e <= tolerance)) {
      return ::testing::AssertionFailure() << id << "attention " << h << " relative L2 " << e;
    }
  }
  return ::testing::AssertionSuccess();
}

grpc::ByteBuffer ToByteBuffer(const std::string& bytes) {
  grpc::Slice slice(bytes);
  return grpc::ByteBuffer(&slice, 1);
}

std::string FromByteBuffer(const grpc::ByteBuffer& buffer) {
  std::vector<grpc::Slice> slices;
  std::string bytes;
  if (!buffer.Dump(&slices).ok()) return bytes;
  for (const grpc::Slice& s : slices) bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
  return bytes;
}

namespace {

// A length-delimited protobuf field: tag, varint length (< 2^14 here), bytes.
std::string LengthDelimited(int field, const std::string& value) {
  std::string out(1, static_cast<char>((field << 3) | 2));
  size_t n = value.size();
  while (n >= 0x80) {
    out.push_back(static_cast<char>((n & 0x7f) | 0x80));
    n >>= 7;
  }
  out.push_back(static_cast<char>(n));
  return out + value;
}

}  // namespace

grpc::Status HealthCheck(const std::shared_ptr<grpc::Channel>& channel, const std::string& service,
                         int* serving_status, int64_t deadline_ms) {
  grpc::GenericStub stub(channel);
  grpc::ClientContext context;
  context.set_deadline(DeadlineIn(deadline_ms));
  // HealthCheckRequest { string service = 1; }
  const grpc::ByteBuffer request = ToByteBuffer(LengthDelimited(1, service));
  grpc::ByteBuffer response;
  std::promise<grpc::Status> done;
  stub.UnaryCall(&context, "/grpc.health.v1.Health/Check", grpc::StubOptions(), &request,
                 &response, [&done](grpc::Status s) { done.set_value(std::move(s)); });
  grpc::Status status = done.get_future().get();  // bounded by the deadline
  if (!status.ok()) return status;
  // HealthCheckResponse { ServingStatus status = 1; } (absent = 0 = UNKNOWN)
  google::protobuf::UnknownFieldSet fields;
  if (!fields.ParseFromString(FromByteBuffer(response))) {
    return grpc::Status(grpc::StatusCode::INTERNAL, "unparsable HealthCheckResponse");
  }
  *serving_status = 0;
  for (int i = 0; i < fields.field_count(); ++i) {
    if (fields.field(i).number() == 1) *serving_status = static_cast<int>(fields.field(i).varint());
  }
  return status;
}

grpc::Status ReflectionExchange(const std::shared_ptr<grpc::Channel>& channel,
                                const std::string& request, std::string* reply,
                                int64_t deadline_ms) {
  grpc::GenericStub stub(channel);
  grpc::ClientContext context;
  context.set_deadline(DeadlineIn(deadline_ms));
  grpc::CompletionQueue cq;
  auto call = stub.PrepareCall(
      &context, "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", &cq);
  // Each operation completes (ok or not) by the deadline at the latest.
  auto next = [&cq] {
    void* tag = nullptr;
    bool ok = false;
    return cq.Next(&tag, &ok) && ok;
  };
  call->StartCall(nullptr);
  if (next()) {
    call->Write(ToByteBuffer(request), nullptr);
    if (next()) {
      call->WritesDone(nullptr);
      if (next()) {
        grpc::ByteBuffer response;
        call->Read(&response, nullptr);
        if (next()) *reply = FromByteBuffer(response);
      }
    }
  }
  grpc::Status status;
  call->Finish(&status, nullptr);
  next();
  cq.Shutdown();
  while (next()) {
  }
  return status;
}

grpc::Status ReflectionListServices(const std::shared_ptr<grpc::Channel>& channel,
                                    std::vector<std::string>* services, int64_t deadline_ms) {
  std::string reply;
  // ServerReflectionRequest { string list_services = 7; }
  const grpc::Status status =
      ReflectionExchange(channel, LengthDelimited(7, "*"), &reply, deadline_ms);
  if (!status.ok()) return status;
  // ServerReflectionResponse { ListServiceResponse list_services_response = 6; }
  // ListServiceResponse { repeated ServiceResponse service = 1; }
  // ServiceResponse { string name = 1; }
  google::protobuf::UnknownFieldSet top;
  if (!top.ParseFromString(reply)) {
    return grpc::Status(grpc::StatusCode::INTERNAL, "unparsable ServerReflectionResponse");
  }
  for (int i = 0; i < top.field_count(); ++i) {
    if (top.field(i).number() != 6) continue;
    google::protobuf::UnknownFieldSet list;
    if (!list.ParseFromString(top.field(i).length_delimited())) continue;
    for (int j = 0; j < list.field_count(); ++j) {
      google::protobuf::UnknownFieldSet service;
      if (list.field(j).number() != 1 || !service.ParseFromString(list.field(j).length_delimited())) {
        continue;
      }
      for (int k = 0; k < service.field_count(); ++k) {
        if (service.field(k).number() == 1) services->push_back(service.field(k).length_delimited());
      }
    }
  }
  return status;
}

double CounterValue(server::Metrics& metrics, const std::string& family,
                    const std::map<std::string, std::string>& labels) {
  for (const prometheus::MetricFamily& f : metrics.registry()->Collect()) {
    if (f.name != family) continue;
    for (const prometheus::ClientMetric& m : f.metric) {
      std::map<std::string, std::string> have;
      for (const auto& label : m.label) have[label.name] = label.value;
      if (have == labels) return m.counter.value;
    }
  }
  return 0;
}

double GaugeValue(server::Metrics& metrics, const std::string& family) {
  for (const prometheus::MetricFamily& f : metrics.registry()->Collect()) {
    if (f.name != family) continue;
    for (const prometheus::ClientMetric& m : f.metric) {
      if (m.label.empty()) return m.gauge.value;
    }
  }
  return -1;
}

absl::StatusOr<std::unique_ptr<ChildProcess>> ChildProcess::Start(
    const std::vector<std::string>& argv, const std::vector<std::string>& env) {
  std::vector<std::string> environment;
  for (char** e = environ; *e != nullptr; ++e) {
    if (std::strncmp(*e, "ATTNSERVE_", 10) != 0) environment.emplace_back(*e);
  }
  environment.insert(environment.end(), env.begin(), env.end());
  std::vector<char*> c_argv, c_env;
  for (const std::string& a : argv) c_argv.push_back(const_cast<char*>(a.c_str()));
  c_argv.push_back(nullptr);
  for (const std::string& e : environment) c_env.push_back(const_cast<char*>(e.c_str()));
  c_env.push_back(nullptr);

  int fds[2];
  // O_CLOEXEC: children spawned concurrently by other threads do not keep
  // the pipe open (which would delay EOF).
  if (pipe2(fds, O_CLOEXEC) != 0) return absl::InternalError(std::strerror(errno));
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, fds[1], 1);
  posix_spawn_file_actions_adddup2(&actions, fds[1], 2);
  auto child = std::unique_ptr<ChildProcess>(new ChildProcess());
  const int rc = posix_spawn(&child->pid_, c_argv[0], &actions, nullptr, c_argv.data(), c_env.data());
  posix_spawn_file_actions_destroy(&actions);
  close(fds[1]);
  if (rc != 0) {
    close(fds[0]);
    child->pid_ = -1;
    return absl::InternalError(absl::StrCat("posix_spawn ", argv[0], ": ", std::strerror(rc)));
  }
  child->reader_ = std::thread(&ChildProcess::ReadOutput, child.get(), fds[0]);
  return child;
}

void ChildProcess::ReadOutput(int fd) {
  char buffer[4096];
  for (;;) {
    const ssize_t n = read(fd, buffer, sizeof(buffer));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    std::lock_guard<std::mutex> lock(mu_);
    output_.append(buffer, static_cast<size_t>(n));
    cv_.notify_all();
  }
  close(fd);
  std::lock_guard<std::mutex> lock(mu_);
  output_done_ = true;
  cv_.notify_all();
}

ChildProcess::~ChildProcess() {
  if (pid_ > 0 && !WaitExit(std::chrono::milliseconds(0)).has_value()) {
    kill(pid_, SIGKILL);
    WaitExit(std::chrono::milliseconds(10000));
  }
  if (reader_.joinable()) reader_.join();  // EOF once the child is gone
}

void ChildProcess::Signal(int signal_number) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!exit_status_.has_value()) kill(pid_, signal_number);  // not yet reaped: pid still ours
}

std::optional<std::string> ChildProcess::WaitForLine(const std::string& needle,
                                                     std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lock(mu_);
  std::optional<std::string> line;
  cv_.wait_for(lock, timeout, [&] {
    const size_t at = output_.find(needle);
    if (at != std::string::npos) {
      const size_t end = output_.find('\n', at);
      if (end != std::string::npos || output_done_) {
        const size_t begin = output_.rfind('\n', at);
        const size_t from = begin == std::string::npos ? 0 : begin + 1;
        line = output_.substr(from, (end == std::string::npos ? output_.size() : end) - from);
        return true;
      }
    }
    return output_done_;
  });
  return line;
}

std::optional<int> ChildProcess::WaitExit(std::chrono::milliseconds timeout) {
  const auto end = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (exit_status_.has_value()) return exit_status_;
      int status = 0;
      if (waitpid(pid_, &status, WNOHANG) == pid_) {
        exit_status_ = status;
        return exit_status_;
      }
    }
    if (std::chrono::steady_clock::now() >= end) return std::nullopt;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
}

std::string ChildProcess::output() const {
  std::lock_guard<std::mutex> lock(mu_);
  return output_;
}

std::string ChildProcess::WaitOutputEnd(std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait_for(lock, timeout, [this] { return output_done_; });
  return output_;
}

int WaitForServingPort(ChildProcess& server, std::chrono::milliseconds timeout) {
  const std::string needle = "serving gRPC on 127.0.0.1:";
  const std::optional<std::string> line = server.WaitForLine(needle, timeout);
  if (!line.has_value()) return 0;
  return std::atoi(line->c_str() + line->find(needle) + needle.size());
}

RunResult RunToExit(const std::vector<std::string>& argv, const std::vector<std::string>& env,
                    std::chrono::milliseconds timeout) {
  RunResult result;
  auto child = ChildProcess::Start(argv, env);
  if (!child.ok()) {
    ADD_FAILURE() << child.status();
    return result;
  }
  const std::optional<int> status = (*child)->WaitExit(timeout);
  if (!status.has_value()) {
    ADD_FAILURE() << argv[0] << " still running after " << timeout.count() << " ms; killed";
    return result;  // the destructor kills it
  }
  result.output = (*child)->WaitOutputEnd(std::chrono::milliseconds(2000));
  if (WIFEXITED(*status)) result.exit_code = WEXITSTATUS(*status);
  return result;
}

}  // namespace attnserve::testing
