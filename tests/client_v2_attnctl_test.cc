// attnctl --protocol v2 (KServe v2 ModelInfer), the real binary, against a
// real in-process server on 127.0.0.1 (tests/golden/data): infer with FP32,
// BF16 and FP16 input equals the reference engine on the values sent;
// --output-npy writes every output; errors exit 1 with the code; bench
// reports exactly the calls it made, and the server counted them as v2.
#include <bit>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <limits>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "client/tensor_io.h"
#include "client/v2_client.h"
#include "tests/e2e_util.h"
#include "tests/test_util.h"
#include "tests/v2_util.h"

namespace attnserve::testing {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
constexpr char kModel[] = "mha_plain";  // fp32: the reference agrees to 1e-5
constexpr uint32_t kD = 32;

class AttnctlV2Test : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    server::ServerOptions options = LoopbackOptions(GoldenRepository());
    options.default_model = kModel;
    server_ = StartLoopbackServer(options).release();
    oracle_ = new ReferenceOracle(GoldenRepository());
  }
  static void TearDownTestSuite() {
    delete server_;
    delete oracle_;
  }
  void SetUp() override {
    ASSERT_NE(server_, nullptr);
    dir_ = ::testing::TempDir() + "attnctl_v2_" +
           ::testing::UnitTest::GetInstance()->current_test_info()->name();
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  // attnctl ARGS... --target <the server> (global flags after the subcommand).
  static RunResult Attnctl(std::vector<std::string> args) {
    args.insert(args.begin(), ATTNCTL_BINARY);
    args.insert(args.end(), {"--target", LoopbackTarget(server_->port()), "--deadline-ms", "20000"});
    return RunToExit(args, {}, std::chrono::seconds(60));
  }
  static nlohmann::json LastJson(const std::string& output) {
    const size_t start = output.rfind("\n{") == std::string::npos ? output.find('{')
                                                                    : output.rfind("\n{") + 1;
    return nlohmann::json::parse(output.substr(start));
  }
  // A JSON file with one AttendRequest of `rows` x kD values.
  std::string RequestFile(const std::vector<float>& values, uint32_t rows) const {
    nlohmann::json j = {{"model", kModel},
                        {"request_id", "from-json"},
                        {"input", {{"rows", rows}, {"cols", kD}, {"data", values}}}};
    const std::string path = dir_ + "/request.json";
    std::ofstream(path) << j.dump();
    return path;
  }

  static server::AttnServer* server_;
  static ReferenceOracle* oracle_;
  std::string dir_;
};
server::AttnServer* AttnctlV2Test::server_ = nullptr;
ReferenceOracle* AttnctlV2Test::oracle_ = nullptr;

TEST_F(AttnctlV2Test, InferEqualsTheReferenceForEachDatatype) {
  std::mt19937 rng(3);
  const std::vector<float> values = RandomVector(rng, 5 * kD, 1.0f);
  const std::string file = RequestFile(values, 5);
  for (const std::string type : {"FP32", "BF16", "FP16"}) {
    SCOPED_TRACE(type);
    const RunResult run = Attnctl({"infer", "--protocol", "v2", "--datatype", type, "--json", file,
                                   "--causal", "--weights", "per-head"});
    ASSERT_EQ(run.exit_code, 0) << run.output;
    const nlohmann::json reply = LastJson(run.output);
    EXPECT_EQ(reply["model_name"], kModel);
    EXPECT_EQ(reply["id"], "from-json");
    EXPECT_GE(reply["parameters"]["batch_size"].get<int>(), 1);
    ASSERT_EQ(reply["outputs"].size(), 2u);
    EXPECT_EQ(reply["outputs"][0]["name"], "output");
    EXPECT_EQ(reply["outputs"][0]["shape"], nlohmann::json({5, kD}));
    EXPECT_EQ(reply["outputs"][1]["name"], "attention");
    EXPECT_EQ(reply["outputs"][1]["shape"], nlohmann::json({4, 5, 5}));
    // The reference on the values as they travelled.
    std::vector<float> seen = values;
    for (float& v : seen) {
      if (type == "BF16") v = v2::FromBf16(v2::ToBf16(v));
      if (type == "FP16") v = v2::FromFp16(v2::ToFp16(v));
    }
    v1::AttendRequest request;
    request.mutable_input()->set_rows(5);
    request.mutable_input()->set_cols(kD);
    request.mutable_input()->mutable_data()->Add(seen.begin(), seen.end());
    request.mutable_mask()->set_causal(true);
    request.set_weights(v1::WEIGHTS_PER_HEAD);
    v1::AttendResponse got;
    got.mutable_output()->set_rows(5);
    got.mutable_output()->set_cols(kD);
    for (float v : reply["outputs"][0]["data"]) got.mutable_output()->add_data(v);
    const std::vector<float> att = reply["outputs"][1]["data"];
    for (int h = 0; h < 4; ++h) {
      v1::Matrix* m = got.add_attention();
      m->set_rows(5);
      m->set_cols(5);
      m->mutable_data()->Add(att.begin() + h * 25, att.begin() + (h + 1) * 25);
    }
    EXPECT_TRUE(oracle_->Matches(kModel, request, got));
  }
}

TEST_F(AttnctlV2Test, OutputNpyWritesEveryOutput) {
  const RunResult run = Attnctl({"infer", "--protocol", "v2", "--random", "6", "--weights", "mean",
                                 "--pooling", "first", "--output-npy", dir_ + "/r_"});
  ASSERT_EQ(run.exit_code, 0) << run.output;
  auto output = client::ReadNpy(dir_ + "/r_output.npy");
  auto attention = client::ReadNpy(dir_ + "/r_attention.npy");
  ASSERT_TRUE(output.ok()) << output.status();
  ASSERT_TRUE(attention.ok()) << attention.status();
  EXPECT_THAT(output->shape, ElementsAre(1, kD));
  EXPECT_THAT(attention->shape, ElementsAre(6, 6));
  for (int i = 0; i < 6; ++i) {  // softmax rows sum to 1
    double sum = 0;
    for (int j = 0; j < 6; ++j) sum += attention->data[i * 6 + j];
    EXPECT_NEAR(sum, 1.0, 1e-5);
  }
}

TEST_F(AttnctlV2Test, ErrorsExitOneWithTheCode) {
  RunResult run = Attnctl({"infer", "--protocol", "v2", "--random", "2", "--model", "nope"});
  EXPECT_EQ(run.exit_code, 1);
  EXPECT_THAT(run.output, HasSubstr("error: NOT_FOUND"));
  run = Attnctl({"infer", "--protocol", "v2", "--random", "2", "--edges", "0,7"});
  EXPECT_EQ(run.exit_code, 1);
  EXPECT_THAT(run.output, HasSubstr("error: INVALID_ARGUMENT: input 'edges'"));
  run = Attnctl({"infer", "--protocol", "v3", "--random", "2"});
  EXPECT_EQ(run.exit_code, 2);
}

TEST_F(AttnctlV2Test, BenchReportsExactlyTheCallsItMade) {
  const double before = CounterValue(server_->metrics(), "attnserve_v2_requests_total",
                                     {{"method", "ModelInfer"}, {"code", "OK"}});
  for (const std::string type : {"FP32", "BF16"}) {
    const RunResult run = Attnctl({"bench", "--protocol", "v2", "--datatype", type, "-n", "40",
                                   "-c", "4", "--lengths", "4,16", "--format", "json"});
    ASSERT_EQ(run.exit_code, 0) << run.output;
    const nlohmann::json report = LastJson(run.output);
    EXPECT_EQ(report["calls"], 40);
    EXPECT_EQ(report["ok"], 40);
    EXPECT_GE(report["mean_batch_size"].get<double>(), 1.0);
    EXPECT_GT(report["mean_compute_ms"].get<double>(), 0.0);
  }
  EXPECT_EQ(CounterValue(server_->metrics(), "attnserve_v2_requests_total",
                         {{"method", "ModelInfer"}, {"code", "OK"}}) - before,
            80);
}

// --output-npy names files after the reply's outputs and sizes them by their
// shapes: a reply from a hostile or broken server (a name with a path in it,
// a shape that disagrees with the bytes, a non-FP32 output) is refused and
// nothing is written outside the prefix.
// FloatToFp16 (what attnctl --datatype FP16 sends) against the compiler's
// IEEE half conversion (GCC's _Float16, round to nearest even): every float
// whose bits are a multiple of 127 (33.8 million, every exponent, both signs)
// plus the edges (ties, the overflow and underflow thresholds, subnormals).
TEST(V2Fp16Test, FloatToFp16RoundsAsIeeeHalf) {
  auto expected = [](float x) { return std::bit_cast<uint16_t>(static_cast<_Float16>(x)); };
  int wrong = 0;
  for (uint64_t w = 0; w <= 0xffffffffu; w += 127) {
    const float x = std::bit_cast<float>(static_cast<uint32_t>(w));
    const uint16_t got = client::FloatToFp16(x);
    if (std::isnan(x) ? (got & 0x7fffu) <= 0x7c00u : got != expected(x)) {
      if (++wrong <= 5) ADD_FAILURE() << std::hexfloat << x << ": " << got << " vs " << expected(x);
    }
  }
  EXPECT_EQ(wrong, 0);
  for (float x : {0.0f, -0.0f, 1.0f, 65504.0f, 65519.99f, 65520.0f, 1e9f, -1e9f,
                  std::ldexp(1.0f, -14), std::ldexp(1.0f, -24), std::ldexp(1.0f, -25),
                  std::ldexp(1.5f, -25), std::ldexp(1.0f, -26), std::ldexp(1023.5f, -24),
                  1.0f + std::ldexp(1.0f, -11), 1.0f + std::ldexp(3.0f, -11),
                  std::numeric_limits<float>::infinity(), std::numeric_limits<float>::denorm_min()}) {
    EXPECT_EQ(client::FloatToFp16(x), expected(x)) << std::hexfloat << x;
  }
  EXPECT_EQ(client::FloatToFp16(std::numeric_limits<float>::quiet_NaN()) & 0x7e00u, 0x7e00u);
}

TEST(AttnctlV2NpyTest, RefusesOutputsThatAreNoSafeFileOrDisagreeWithTheirShape) {
  const std::string dir = ::testing::TempDir() + "/v2_npy_" + std::to_string(::getpid());
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir + "/out/sub");
  const std::string prefix = dir + "/out/sub/";  // --output-npy DIR/ names files by output
  const std::string floats(4 * 6, '\0');
  struct Case {
    const char* name;
    std::string tensor;
    std::string datatype;
    std::vector<int64_t> shape;
    std::string raw;
  };
  const std::vector<Case> cases = {
      {"path in the name", "../../escaped", "FP32", {2, 3}, floats},
      {"parent in the name", "../escaped", "FP32", {2, 3}, floats},
      {"dot name", "..", "FP32", {2, 3}, floats},
      {"empty name", "", "FP32", {2, 3}, floats},
      {"shape over the bytes", "output", "FP32", {4, 3}, floats},
      {"shape under the bytes", "output", "FP32", {1, 3}, floats},
      {"negative dimension", "output", "FP32", {-2, -3}, floats},
      {"not FP32", "output", "FP64", {1, 3}, floats},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    inference::ModelInferResponse reply;
    auto* t = reply.add_outputs();
    t->set_name(c.tensor);
    t->set_datatype(c.datatype);
    for (int64_t d : c.shape) t->add_shape(d);
    reply.add_raw_output_contents(c.raw);
    std::vector<std::string> paths;
    const absl::Status s = client::WriteModelInferNpy(reply, prefix, &paths);
    EXPECT_FALSE(s.ok());
    EXPECT_TRUE(paths.empty());
  }
  EXPECT_FALSE(std::filesystem::exists(dir + "/escaped.npy"));
  EXPECT_FALSE(std::filesystem::exists(dir + "/out/escaped.npy"));
  EXPECT_FALSE(std::filesystem::exists(dir + "/out/sub/.npy"));
  // A well-formed reply is written.
  inference::ModelInferResponse reply;
  auto* t = reply.add_outputs();
  t->set_name("output");
  t->set_datatype("FP32");
  t->add_shape(2);
  t->add_shape(3);
  reply.add_raw_output_contents(floats);
  std::vector<std::string> paths;
  ASSERT_TRUE(client::WriteModelInferNpy(reply, prefix, &paths).ok());
  EXPECT_THAT(paths, ElementsAre(prefix + "output.npy"));
  EXPECT_TRUE(std::filesystem::exists(prefix + "output.npy"));
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace attnserve::testing
