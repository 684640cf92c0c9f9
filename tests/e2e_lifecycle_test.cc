// End-to-end tests of model lifecycle (--model-control, ModelLifecycle,
// attnserve.v1.ModelRepository): real in-process servers over 127.0.0.1 on
// a model repository the test edits. Versions are told apart by their
// numbers (each checked against the reference engine of that version's
// files) and by ModelInfo.version. A version "v2" of mha_plain is its
// weights with normalization relu instead of softmax: different outputs.
//
// The poll thread itself is covered once (a fast 0.2 s poll); the other
// tests call lifecycle().PollNow() so that what happens when is decided by
// the test. Every RPC has a deadline, every wait a bound.
#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <thread>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <prometheus/registry.h>

#include "absl/strings/str_cat.h"
#include "attnserve/v1/model_repository.grpc.pb.h"
#include "inference/v2/open_inference.grpc.pb.h"
#include "tests/e2e_util.h"
#include "tests/fake_engines.h"
#include "tests/tls_util.h"

namespace attnserve::testing {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

constexpr auto kWait = std::chrono::seconds(20);  // bounds hangs; never a speed check

void WriteText(const fs::path& path, const std::string& text) {
  // Written beside and renamed: a poll never sees half a file.
  const fs::path tmp = path.string() + ".tmp";
  std::ofstream(tmp, std::ios::binary | std::ios::trunc) << text;
  fs::rename(tmp, path);
}

std::string ReadText(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

std::string ReluConfig(const fs::path& model_dir) {
  std::string config = ReadText(model_dir / "config.json");
  const auto at = config.find("\"softmax\"");
  EXPECT_NE(at, std::string::npos);
  return config.replace(at, 9, "\"relu\"");
}

// A fresh directory under gtest's TempDir, holding:
//   repo/   the served repository (mha_plain at first),
//   v1/, v2/  reference repositories of mha_plain's two versions, and
//   golden models to add.
class LifecycleTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    root_ = fs::path(::testing::TempDir()) / absl::StrCat("attn_lifecycle_", getpid(), "_",
                                                           info->name());
    fs::remove_all(root_);
    const fs::path golden = GoldenRepository();
    for (const char* dir : {"repo", "v1", "v2", "spare"}) fs::create_directories(root_ / dir);
    fs::copy(golden / "mha_plain", repo() / "mha_plain");
    fs::copy(golden / "mha_plain", root_ / "v1" / "mha_plain");
    fs::copy(golden / "mha_plain", root_ / "v2" / "mha_plain");
    WriteText(root_ / "v2" / "mha_plain" / "config.json", ReluConfig(golden / "mha_plain"));
    fs::copy(golden / "mha_sinusoidal_sep", root_ / "spare" / "mha_sinusoidal_sep");
    v1_ = std::make_unique<ReferenceOracle>((root_ / "v1").string());
    v2_ = std::make_unique<ReferenceOracle>((root_ / "v2").string());
  }
  void TearDown() override { fs::remove_all(root_); }

  fs::path repo() const { return root_ / "repo"; }

  std::unique_ptr<server::AttnServer> Start(server::ModelControl control,
                                           double poll_s = 3600,
                                           server::EngineFactory factory = {}) {
    server::ServerOptions o = LoopbackOptions(repo().string());
    o.model_control = control;
    o.repository_poll_s = poll_s;
    o.engine_factory = std::move(factory);
    auto server = StartLoopbackServer(o);
    if (server != nullptr) channel_ = LoopbackChannel(server->port());
    return server;
  }

  // Makes mha_plain in the repository version 2 (one atomic rename).
  void UpdateToV2() {
    WriteText(repo() / "mha_plain" / "config.json", ReadText(root_ / "v2/mha_plain/config.json"));
  }

  // name -> version, from ListModels.
  std::map<std::string, std::string> Listed() {
    auto stub = v1::Attention::NewStub(channel_);
    grpc::ClientContext context;
    context.set_deadline(DeadlineIn(5000));
    v1::ListModelsResponse response;
    std::map<std::string, std::string> out;
    if (!stub->ListModels(&context, {}, &response).ok()) return out;
    for (const auto& m : response.models()) out[m.name()] = m.version();
    return out;
  }

  // KServe v2 ModelReady for `name` at `version` ("" = the one served);
  // -1 when the call itself failed.
  int V2Ready(const std::string& name, const std::string& version = "") {
    auto stub = inference::GRPCInferenceService::NewStub(channel_);
    grpc::ClientContext context;
    context.set_deadline(DeadlineIn(5000));
    inference::ModelReadyRequest request;
    request.set_name(name);
    request.set_version(version);
    inference::ModelReadyResponse response;
    if (!stub->ModelReady(&context, request, &response).ok()) return -1;
    return response.ready() ? 1 : 0;
  }

  int Health(const std::string& name) {
    int status = -1;
    const grpc::Status s = HealthCheck(channel_, name, &status);
    return s.ok() ? status : -static_cast<int>(s.error_code());
  }

  // One Attend of a random mha_plain request; *request gets what was sent.
  grpc::Status AttendPlain(v1::AttendRequest* request, v1::AttendResponse* reply, int seed) {
    std::mt19937 rng(seed);
    *request = RandomRequest(rng, "mha_plain", 32, 6);
    auto stub = v1::Attention::NewStub(channel_);
    return CallAttend(*stub, *request, reply);
  }

  fs::path root_;
  std::unique_ptr<ReferenceOracle> v1_, v2_;
  std::shared_ptr<grpc::Channel> channel_;
};

double ModelInfoSeries(server::Metrics& metrics, const std::string& model,
                       std::string* version) {
  double count = 0;
  for (const auto& f : metrics.registry()->Collect()) {
    if (f.name != "attnserve_model_info") continue;
    for (const auto& m : f.metric) {
      std::map<std::string, std::string> labels;
      for (const auto& l : m.label) labels[l.name] = l.value;
      if (labels["model"] != model) continue;
      ++count;
      *version = labels["version"];
    }
  }
  return count;
}

TEST_F(LifecycleTest, PollThreadAddsUpdatesAndRemovesModels) {
  auto server = Start(server::ModelControl::kPoll, 0.2);
  ASSERT_NE(server, nullptr);
  const std::string first = Listed()["mha_plain"];
  ASSERT_EQ(first.size(), 12u);

  // Add: served once loaded, health SERVING, numbers of the reference.
  fs::rename(root_ / "spare" / "mha_sinusoidal_sep", repo() / "mha_sinusoidal_sep");
  // Health turns SERVING as the model is published (a moment after ListModels).
  ASSERT_TRUE(WaitFor([&] { return Health("mha_sinusoidal_sep") == 1; }, kWait));
  EXPECT_EQ(Listed().count("mha_sinusoidal_sep"), 1u);
  EXPECT_EQ(V2Ready("mha_sinusoidal_sep"), 1);
  {
    const ReferenceOracle oracle(repo().string());
    std::mt19937 rng(5);
    const v1::AttendRequest request = RandomRequest(rng, "mha_sinusoidal_sep", 64, 9);
    v1::AttendResponse reply;
    auto stub = v1::Attention::NewStub(channel_);
    ASSERT_TRUE(CallAttend(*stub, request, &reply).ok());
    EXPECT_TRUE(oracle.Matches("mha_sinusoidal_sep", request, reply));
  }

  // Update: a new version, its numbers, its model_info series only.
  UpdateToV2();
  ASSERT_TRUE(WaitFor([&] { return Listed()["mha_plain"] != first; }, kWait));
  const std::string second = Listed()["mha_plain"];
  v1::AttendRequest request;
  v1::AttendResponse reply;
  ASSERT_TRUE(AttendPlain(&request, &reply, 7).ok());
  EXPECT_TRUE(v2_->Matches("mha_plain", request, reply));
  EXPECT_FALSE(v1_->Matches("mha_plain", request, reply));
  std::string version;
  EXPECT_EQ(ModelInfoSeries(server->metrics(), "mha_plain", &version), 1);
  EXPECT_EQ(version, second);
  EXPECT_EQ(Health("mha_plain"), 1);
  // v2 follows: the new version is ready, the swapped-out one is not.
  EXPECT_EQ(V2Ready("mha_plain", second), 1);
  EXPECT_EQ(V2Ready("mha_plain", first), 0);

  // Remove: gone from ListModels and model_info; requests NOT_FOUND.
  fs::rename(repo() / "mha_sinusoidal_sep", root_ / "spare" / "mha_sinusoidal_sep");
  // Health turns NOT_SERVING first, then the model leaves ListModels.
  ASSERT_TRUE(WaitFor([&] { return Listed().count("mha_sinusoidal_sep") == 0; }, kWait));
  EXPECT_EQ(Health("mha_sinusoidal_sep"), 2);
  std::mt19937 rng(9);
  auto stub = v1::Attention::NewStub(channel_);
  EXPECT_EQ(CallAttend(*stub, RandomRequest(rng, "mha_sinusoidal_sep", 64, 4), &reply)
                .error_code(),
            grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(ModelInfoSeries(server->metrics(), "mha_sinusoidal_sep", &version), 0);
  EXPECT_EQ(Health("mha_sinusoidal_sep"), 2);  // NOT_SERVING: gRPC's service keeps names
  EXPECT_EQ(V2Ready("mha_sinusoidal_sep"), 0);
  EXPECT_TRUE(server->Drain());
}

// The engine of mha_plain blocks its first batch until the test opens the
// gate: a request is computing on version 1 while version 2 is swapped in.
TEST_F(LifecycleTest, InFlightAndQueuedRequestsFinishOnTheVersionTheyStartedWith) {
  auto state = std::make_shared<EngineHookState>();
  Gate release;
  std::atomic<int> blocked{0};
  state->before_run = [&](const std::string&, std::span<const core::SequenceInput>) {
    if (blocked.fetch_add(1) == 0) release.Wait(kWait);
    return absl::OkStatus();
  };
  server::ServerOptions o = LoopbackOptions(repo().string());
  o.model_control = server::ModelControl::kPoll;
  o.repository_poll_s = 3600;  // PollNow below
  o.batching.max_batch_size = 1;  // the second request waits in the old queue
  o.engine_factory = HookedEngineFactory(state);
  auto server = StartLoopbackServer(o);
  ASSERT_NE(server, nullptr);
  channel_ = LoopbackChannel(server->port());
  const std::string first = Listed()["mha_plain"];

  v1::AttendRequest computing_request, queued_request;
  v1::AttendResponse computing_reply, queued_reply;
  grpc::Status computing_status, queued_status;
  std::thread computing([&] { computing_status = AttendPlain(&computing_request, &computing_reply, 1); });
  ASSERT_TRUE(WaitFor([&] { return blocked.load() == 1; }, kWait));
  std::thread queued([&] { queued_status = AttendPlain(&queued_request, &queued_reply, 2); });
  ASSERT_TRUE(WaitFor([&] { return server->registry().Find("mha_plain")->batcher->queue_depth() == 1; }, kWait));

  const std::weak_ptr<server::ServedModel> old_version = server->registry().Find("mha_plain");
  UpdateToV2();
  std::thread poll([&] { server->lifecycle().PollNow(); });  // returns once v1 drained
  ASSERT_TRUE(WaitFor([&] { return Listed()["mha_plain"] != first; }, kWait));
  // The next request goes to v2 while v1 still computes; it waits for the
  // one CPU budget (the compute gate), which v1's stuck batch holds.
  v1::AttendRequest next_request;
  v1::AttendResponse next_reply;
  grpc::Status next_status;
  std::thread next([&] { next_status = AttendPlain(&next_request, &next_reply, 3); });
  ASSERT_TRUE(WaitFor([&] {
    auto v2 = server->registry().Find("mha_plain");
    return v2->version() != first && v2->batcher->held_bytes() > 0;
  }, kWait));
  EXPECT_EQ(blocked.load(), 1);  // v1's first batch is still in the engine

  release.Open();
  computing.join();
  queued.join();
  next.join();
  poll.join();
  ASSERT_TRUE(computing_status.ok()) << computing_status.error_message();
  ASSERT_TRUE(queued_status.ok()) << queued_status.error_message();
  ASSERT_TRUE(next_status.ok()) << next_status.error_message();
  EXPECT_TRUE(v1_->Matches("mha_plain", computing_request, computing_reply));
  EXPECT_TRUE(v1_->Matches("mha_plain", queued_request, queued_reply));
  EXPECT_FALSE(v2_->Matches("mha_plain", computing_request, computing_reply));
  EXPECT_TRUE(v2_->Matches("mha_plain", next_request, next_reply));
  EXPECT_FALSE(v1_->Matches("mha_plain", next_request, next_reply));
  EXPECT_EQ(state->max_running.load(), 1);  // old and new never computed at once
  EXPECT_TRUE(old_version.expired()) << "v1 drained and freed by the time the poll returns";
}

TEST_F(LifecycleTest, BrokenUpdateKeepsTheOldVersionServingAndIsReportedOnce) {
  auto server = Start(server::ModelControl::kPoll);
  ASSERT_NE(server, nullptr);
  const std::string first = Listed()["mha_plain"];
  const std::string good = ReadText(repo() / "mha_plain" / "config.json");
  std::string broken = good;
  broken.replace(broken.find("\"num_heads\": 4"), 14, "\"num_heads\": 5");  // 32 % 5 != 0
  WriteText(repo() / "mha_plain" / "config.json", broken);
  server->lifecycle().PollNow();
  server->lifecycle().PollNow();  // the same broken files: not retried, not recounted

  const std::map<std::string, std::string> labels = {{"model", "mha_plain"}};
  EXPECT_EQ(CounterValue(server->metrics(), "attnserve_model_load_failures_total", labels), 1);
  EXPECT_EQ(Health("mha_plain"), 2);  // NOT_SERVING
  EXPECT_EQ(Listed()["mha_plain"], first);
  v1::AttendRequest request;
  v1::AttendResponse reply;
  ASSERT_TRUE(AttendPlain(&request, &reply, 4).ok());
  EXPECT_TRUE(v1_->Matches("mha_plain", request, reply));

  auto stub = v1::ModelRepository::NewStub(channel_);
  grpc::ClientContext context;
  context.set_deadline(DeadlineIn(5000));
  v1::ListRepositoryResponse list;
  ASSERT_TRUE(stub->ListRepository(&context, {}, &list).ok());
  ASSERT_EQ(list.models_size(), 1);
  EXPECT_EQ(list.models(0).state(), v1::MODEL_STATE_READY);
  EXPECT_EQ(list.models(0).version(), first);
  EXPECT_THAT(list.models(0).load_error(), HasSubstr("config.json"));

  // Broken weights (truncated) are a new version: reported again, naming the file.
  fs::resize_file(repo() / "mha_plain" / "weights.safetensors", 100);
  server->lifecycle().PollNow();
  EXPECT_EQ(CounterValue(server->metrics(), "attnserve_model_load_failures_total", labels), 2);
  EXPECT_EQ(Listed()["mha_plain"], first);

  // Files back as they were: the served version again, SERVING.
  fs::copy_file(fs::path(GoldenRepository()) / "mha_plain" / "weights.safetensors",
                repo() / "mha_plain" / "weights.safetensors", fs::copy_options::overwrite_existing);
  WriteText(repo() / "mha_plain" / "config.json", good);
  server->lifecycle().PollNow();  // a new mtime: a new version, loaded
  EXPECT_EQ(Health("mha_plain"), 1);
  EXPECT_NE(Listed()["mha_plain"], "");
  ASSERT_TRUE(AttendPlain(&request, &reply, 5).ok());
  EXPECT_TRUE(v1_->Matches("mha_plain", request, reply));
}

TEST_F(LifecycleTest, RemovedModelAnswersWhatItAcceptedThenIsUnloaded) {
  auto state = std::make_shared<EngineHookState>();
  Gate release;
  std::atomic<int> runs{0};
  state->before_run = [&](const std::string& model, std::span<const core::SequenceInput>) {
    if (model == "mha_plain" && runs.fetch_add(1) == 0) release.Wait(kWait);
    return absl::OkStatus();
  };
  fs::rename(root_ / "spare" / "mha_sinusoidal_sep", repo() / "mha_sinusoidal_sep");
  auto server = Start(server::ModelControl::kPoll, 3600, HookedEngineFactory(state));
  ASSERT_NE(server, nullptr);
  v1::AttendRequest request;
  v1::AttendResponse reply;
  grpc::Status status;
  std::thread inflight([&] { status = AttendPlain(&request, &reply, 6); });
  ASSERT_TRUE(WaitFor([&] { return runs.load() == 1; }, kWait));

  const std::weak_ptr<server::ServedModel> removed = server->registry().Find("mha_plain");
  fs::rename(repo() / "mha_plain", root_ / "spare" / "mha_plain");
  std::thread poll([&] { server->lifecycle().PollNow(); });
  ASSERT_TRUE(WaitFor([&] { return Listed().count("mha_plain") == 0; }, kWait));
  v1::AttendRequest late;
  v1::AttendResponse late_reply;
  EXPECT_EQ(AttendPlain(&late, &late_reply, 7).error_code(), grpc::StatusCode::NOT_FOUND);
  release.Open();
  inflight.join();
  poll.join();
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_TRUE(v1_->Matches("mha_plain", request, reply));
  EXPECT_TRUE(removed.expired()) << "drained and freed by the time the poll returns";
  EXPECT_EQ(Health("mha_plain"), 2);
  EXPECT_EQ(Listed().count("mha_sinusoidal_sep"), 1u);
  // Requests naming no model: the default (mha_plain, first by name at
  // startup) is gone, so NOT_FOUND; it is not replaced by another model.
  auto stub = v1::Attention::NewStub(channel_);
  v1::AttendRequest unnamed = request;
  unnamed.clear_model();
  const grpc::Status s = CallAttend(*stub, unnamed, &late_reply);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_THAT(s.error_message(), HasSubstr("default model 'mha_plain'"));
}

// SIGTERM while a removed model is still draining: the drain covers it (its
// accepted request is answered) and no poll or load starts afterwards.
TEST_F(LifecycleTest, ShutdownDrainCoversAModelBeingUnloaded) {
  auto state = std::make_shared<EngineHookState>();
  Gate release;
  std::atomic<int> runs{0};
  state->before_run = [&](const std::string&, std::span<const core::SequenceInput>) {
    if (runs.fetch_add(1) == 0) release.Wait(kWait);
    return absl::OkStatus();
  };
  fs::rename(root_ / "spare" / "mha_sinusoidal_sep", repo() / "mha_sinusoidal_sep");
  auto server = Start(server::ModelControl::kPoll, 3600, HookedEngineFactory(state));
  ASSERT_NE(server, nullptr);
  v1::AttendRequest request;
  v1::AttendResponse reply;
  grpc::Status status;
  std::thread inflight([&] { status = AttendPlain(&request, &reply, 11); });
  ASSERT_TRUE(WaitFor([&] { return runs.load() == 1; }, kWait));
  fs::rename(repo() / "mha_plain", root_ / "spare" / "mha_plain");
  std::thread poll([&] { server->lifecycle().PollNow(); });
  ASSERT_TRUE(WaitFor([&] { return Listed().count("mha_plain") == 0; }, kWait));

  std::atomic<bool> drained{false};
  bool drain_ok = false;
  std::thread drain([&] {
    drain_ok = server->Drain();
    drained = true;
  });
  // The drain waits for the removed model's batch like any other.
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  EXPECT_FALSE(drained.load());
  release.Open();
  drain.join();
  inflight.join();
  poll.join();
  EXPECT_TRUE(drain_ok);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_TRUE(v1_->Matches("mha_plain", request, reply));
  // Stopped: no load after the drain, and a poll changes nothing.
  fs::rename(root_ / "spare" / "mha_plain", repo() / "mha_plain");
  server->lifecycle().PollNow();
  EXPECT_EQ(server->registry().Find("mha_plain"), nullptr);
}

grpc::Status Load(const std::shared_ptr<grpc::Channel>& channel, const std::string& name,
                  v1::LoadModelResponse* response, const std::string& token = "") {
  auto stub = v1::ModelRepository::NewStub(channel);
  grpc::ClientContext context;
  context.set_deadline(DeadlineIn(20000));
  if (!token.empty()) context.AddMetadata("authorization", "Bearer " + token);
  v1::LoadModelRequest request;
  request.set_name(name);
  return stub->LoadModel(&context, request, response);
}

grpc::Status Unload(const std::shared_ptr<grpc::Channel>& channel, const std::string& name,
                    const std::string& token = "") {
  auto stub = v1::ModelRepository::NewStub(channel);
  grpc::ClientContext context;
  context.set_deadline(DeadlineIn(20000));
  if (!token.empty()) context.AddMetadata("authorization", "Bearer " + token);
  v1::UnloadModelRequest request;
  request.set_name(name);
  v1::UnloadModelResponse response;
  return stub->UnloadModel(&context, request, &response);
}

TEST_F(LifecycleTest, ExplicitLoadUpdateUnloadAndTheirErrors) {
  auto server = Start(server::ModelControl::kExplicit);
  ASSERT_NE(server, nullptr);
  const std::string first = Listed()["mha_plain"];
  v1::LoadModelResponse loaded;

  // Unknown directory, a bad name, a directory that is not there yet.
  EXPECT_EQ(Load(channel_, "nope", &loaded).error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(Load(channel_, "../v1", &loaded).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(Load(channel_, "", &loaded).error_code(), grpc::StatusCode::INVALID_ARGUMENT);

  // New model: loaded, served, health SERVING; loading it again changes nothing.
  fs::rename(root_ / "spare" / "mha_sinusoidal_sep", repo() / "mha_sinusoidal_sep");
  ASSERT_TRUE(Load(channel_, "mha_sinusoidal_sep", &loaded).ok());
  EXPECT_TRUE(loaded.changed());
  EXPECT_EQ(loaded.model().name(), "mha_sinusoidal_sep");
  EXPECT_EQ(loaded.model().d_model(), 64u);
  EXPECT_EQ(Listed().count("mha_sinusoidal_sep"), 1u);
  EXPECT_EQ(Health("mha_sinusoidal_sep"), 1);
  ASSERT_TRUE(Load(channel_, "mha_sinusoidal_sep", &loaded).ok());
  EXPECT_FALSE(loaded.changed());

  // Update: the loaded model's files changed -> swapped; numbers of v2.
  UpdateToV2();
  ASSERT_TRUE(Load(channel_, "mha_plain", &loaded).ok());
  EXPECT_TRUE(loaded.changed());
  EXPECT_NE(loaded.model().version(), first);
  EXPECT_TRUE(loaded.model().is_default());
  EXPECT_EQ(Listed()["mha_plain"], loaded.model().version());
  v1::AttendRequest request;
  v1::AttendResponse reply;
  ASSERT_TRUE(AttendPlain(&request, &reply, 8).ok());
  EXPECT_TRUE(v2_->Matches("mha_plain", request, reply));

  // Broken files: INVALID_ARGUMENT naming the file; v2 keeps serving.
  fs::resize_file(repo() / "mha_plain" / "weights.safetensors", 100);
  const grpc::Status broken = Load(channel_, "mha_plain", &loaded);
  EXPECT_EQ(broken.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(broken.error_message(), HasSubstr("weights.safetensors"));
  EXPECT_THAT(broken.error_message(), HasSubstr("keeps serving"));
  EXPECT_EQ(Health("mha_plain"), 2);
  ASSERT_TRUE(AttendPlain(&request, &reply, 9).ok());
  EXPECT_TRUE(v2_->Matches("mha_plain", request, reply));

  // Unload: gone; unloading again is NOT_FOUND.
  ASSERT_TRUE(Unload(channel_, "mha_sinusoidal_sep").ok());
  EXPECT_EQ(Listed().count("mha_sinusoidal_sep"), 0u);
  EXPECT_EQ(Unload(channel_, "mha_sinusoidal_sep").error_code(), grpc::StatusCode::NOT_FOUND);
  std::mt19937 rng(10);
  auto stub = v1::Attention::NewStub(channel_);
  EXPECT_EQ(CallAttend(*stub, RandomRequest(rng, "mha_sinusoidal_sep", 64, 4), &reply)
                .error_code(),
            grpc::StatusCode::NOT_FOUND);

  // ListRepository: one row per directory or loaded model.
  auto repo_stub = v1::ModelRepository::NewStub(channel_);
  grpc::ClientContext context;
  context.set_deadline(DeadlineIn(5000));
  v1::ListRepositoryResponse list;
  ASSERT_TRUE(repo_stub->ListRepository(&context, {}, &list).ok());
  ASSERT_EQ(list.models_size(), 2);
  EXPECT_EQ(list.models(0).name(), "mha_plain");
  EXPECT_EQ(list.models(0).state(), v1::MODEL_STATE_READY);
  EXPECT_THAT(list.models(0).load_error(), HasSubstr("weights.safetensors"));
  EXPECT_EQ(list.models(1).name(), "mha_sinusoidal_sep");
  EXPECT_EQ(list.models(1).state(), v1::MODEL_STATE_NOT_LOADED);
  EXPECT_TRUE(list.models(1).in_repository());
}

TEST_F(LifecycleTest, LoadAndUnloadNeedExplicitControlAndNoneIgnoresTheRepository) {
  for (server::ModelControl control : {server::ModelControl::kNone, server::ModelControl::kPoll}) {
    SCOPED_TRACE(server::ModelControlName(control));
    auto server = Start(control, 0.2);
    ASSERT_NE(server, nullptr);
    v1::LoadModelResponse loaded;
    const grpc::Status load = Load(channel_, "mha_plain", &loaded);
    EXPECT_EQ(load.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
    EXPECT_THAT(load.error_message(), HasSubstr("--model-control explicit"));
    EXPECT_EQ(Unload(channel_, "mha_plain").error_code(), grpc::StatusCode::FAILED_PRECONDITION);
    EXPECT_EQ(Listed().count("mha_plain"), 1u);
  }
  // none: a new directory and a changed one stay unnoticed (several would-be polls).
  auto server = Start(server::ModelControl::kNone, 0.2);
  ASSERT_NE(server, nullptr);
  const std::string first = Listed()["mha_plain"];
  fs::rename(root_ / "spare" / "mha_sinusoidal_sep", repo() / "mha_sinusoidal_sep");
  UpdateToV2();
  std::this_thread::sleep_for(std::chrono::milliseconds(1000));
  EXPECT_EQ(Listed(), (std::map<std::string, std::string>{{"mha_plain", first}}));
}

TEST_F(LifecycleTest, ModelRepositoryMethodsObeyTheAuthorizationPolicy) {
  const fs::path tokens = root_ / "tokens", policy = root_ / "policy.json";
  WriteText(tokens, "admin " + Sha256Hex("admin-token") + "\nuser " + Sha256Hex("user-token") + "\n");
  WriteText(policy, R"({
    "name": "attnserve",
    "allow_rules": [
      {"name": "admin-manages-models", "source": {"principals": ["admin"]},
       "request": {"paths": ["/attnserve.v1.ModelRepository/*"]}},
      {"name": "everyone-attends", "source": {"principals": ["*"]},
       "request": {"paths": ["/attnserve.v1.Attention/*"]}}
    ]
  })");
  server::ServerOptions o = LoopbackOptions(repo().string());
  o.model_control = server::ModelControl::kExplicit;
  o.security.auth_tokens_path = tokens.string();
  o.security.authz_policy_path = policy.string();
  auto server = StartLoopbackServer(o);
  ASSERT_NE(server, nullptr);
  auto channel = LoopbackChannel(server->port());
  fs::rename(root_ / "spare" / "mha_sinusoidal_sep", repo() / "mha_sinusoidal_sep");
  v1::LoadModelResponse loaded;
  EXPECT_EQ(Load(channel, "mha_sinusoidal_sep", &loaded, "user-token").error_code(),
            grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(Load(channel, "mha_sinusoidal_sep", &loaded).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(Unload(channel, "mha_plain", "user-token").error_code(),
            grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(server->registry().models()->size(), 1u);  // nothing happened
  ASSERT_TRUE(Load(channel, "mha_sinusoidal_sep", &loaded, "admin-token").ok());
  EXPECT_EQ(server->registry().models()->size(), 2u);
  ASSERT_TRUE(Unload(channel, "mha_sinusoidal_sep", "admin-token").ok());
  EXPECT_EQ(server->registry().models()->size(), 1u);
}

}  // namespace
}  // namespace attnserve::testing
