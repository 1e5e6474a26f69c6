// Classify a picture with a model built by mnv2-edge, as an app on the device would.
//
//   classify ARTIFACT_DIR IMAGE [--top K] [--threads N] [--save-input FILE]
//
// ARTIFACT_DIR is what `compile/build.py --bundle-runtime` wrote: model.so, manifest.json,
// labels.txt (when built with --labels) and runtime/ (libtvm_runtime.so, libtvm_ffi.so, found through
// this program's rpath $ORIGIN/runtime when it sits in ARTIFACT_DIR). Everything the program needs
// to know about the model comes from manifest.json's "inputs", "outputs" and "app" (compile/artifacts/manifest.py):
// nothing about MobileNetV2 is built in. --save-input writes the input tensor as raw bytes, so the
// result can be checked against another runtime on exactly the same input.
#include <tvm/ffi/container/array.h>
#include <tvm/ffi/container/map.h>
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/extra/json.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>

#define STB_IMAGE_IMPLEMENTATION
#define STBI_ONLY_JPEG
#define STBI_ONLY_PNG
#include "stb_image.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <numeric>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace ffi = tvm::ffi;
using ffi::Tensor;

namespace {

struct HostAlloc {  // input tensors in this process's memory (the model runs on the CPU)
  void AllocData(DLTensor* t) { t->data = std::malloc(ffi::GetDataSize(*t)); }
  void FreeData(DLTensor* t) { std::free(t->data); }
};

std::string ReadText(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read " + path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

ffi::Map<ffi::Any, ffi::Any> Obj(const ffi::Any& value) { return value.cast<ffi::Map<ffi::Any, ffi::Any>>(); }
ffi::Array<ffi::Any> Arr(const ffi::Any& value) { return value.cast<ffi::Array<ffi::Any>>(); }
double Num(const ffi::Any& value) {
  if (auto i = value.try_cast<int64_t>()) return static_cast<double>(*i);
  return value.cast<double>();
}

ffi::Function Fn(const ffi::Module& module, const char* name) {
  auto f = module->GetFunction(name);
  if (!f) throw std::runtime_error(std::string("model.so has no function ") + name + ": not a Relax VM executable");
  return *f;
}

ffi::Function Global(const char* name) {
  auto f = ffi::Function::GetGlobal(name);
  if (!f) throw std::runtime_error(std::string("the TVM runtime has no function ") + name);
  return *f;
}

// One axis of an antialiased bilinear resize (a triangle filter widened by the scale when shrinking,
// as Pillow's BILINEAR does): for each output index, the input indices and their weights.
struct Taps {
  std::vector<int> first;
  std::vector<std::vector<float>> weights;
};

Taps ResizeTaps(int in_size, int out_size) {
  Taps taps;
  const double scale = static_cast<double>(in_size) / out_size;
  const double support = std::max(scale, 1.0);
  for (int o = 0; o < out_size; ++o) {
    const double center = (o + 0.5) * scale;
    const int lo = std::max(0, static_cast<int>(std::floor(center - support + 0.5)));
    const int hi = std::min(in_size, static_cast<int>(std::floor(center + support + 0.5)));
    std::vector<float> w;
    double total = 0;
    for (int i = lo; i < hi; ++i) {
      const double t = 1.0 - std::fabs((i + 0.5 - center) / support);
      w.push_back(static_cast<float>(std::max(t, 0.0)));
      total += w.back();
    }
    for (auto& x : w) x = static_cast<float>(x / total);
    taps.first.push_back(lo);
    taps.weights.push_back(w);
  }
  return taps;
}

// RGB bytes [h][w][3] -> floats [out_h][out_w][3] in 0..255.
std::vector<float> Resize(const unsigned char* rgb, int w, int h, int out_w, int out_h) {
  const Taps tx = ResizeTaps(w, out_w), ty = ResizeTaps(h, out_h);
  std::vector<float> rows(static_cast<size_t>(h) * out_w * 3), out(static_cast<size_t>(out_h) * out_w * 3);
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < out_w; ++x)
      for (int c = 0; c < 3; ++c) {
        float v = 0;
        for (size_t k = 0; k < tx.weights[x].size(); ++k)
          v += tx.weights[x][k] * rgb[(static_cast<size_t>(y) * w + tx.first[x] + k) * 3 + c];
        rows[(static_cast<size_t>(y) * out_w + x) * 3 + c] = v;
      }
  for (int y = 0; y < out_h; ++y)
    for (int x = 0; x < out_w; ++x)
      for (int c = 0; c < 3; ++c) {
        float v = 0;
        for (size_t k = 0; k < ty.weights[y].size(); ++k)
          v += ty.weights[y][k] * rows[((ty.first[y] + k) * out_w + x) * 3 + c];
        out[(static_cast<size_t>(y) * out_w + x) * 3 + c] = std::round(std::clamp(v, 0.0f, 255.0f));
      }
  return out;
}

struct Quantization {
  bool quantized = false;
  double scale = 1;
  int64_t zero_point = 0;
};

Quantization QuantizationOf(const ffi::Map<ffi::Any, ffi::Any>& tensor) {
  Quantization q;
  auto scales = Arr(tensor.at("scale"));
  std::string dtype = tensor.at("dtype").cast<ffi::String>();
  if (scales.size() > 0 && dtype != "float32") {
    q.quantized = true;
    q.scale = Num(scales[0]);
    q.zero_point = static_cast<int64_t>(Num(Arr(tensor.at("zero_point"))[0]));
  }
  return q;
}

DLDataType DataTypeOf(const std::string& dtype) {
  if (dtype == "float32") return DLDataType{kDLFloat, 32, 1};
  if (dtype == "int8") return DLDataType{kDLInt, 8, 1};
  if (dtype == "uint8") return DLDataType{kDLUInt, 8, 1};
  throw std::runtime_error("input dtype " + dtype + " is not a picture's (float32, int8 or uint8)");
}

// The picture as the model's input tensor, following the manifest's app.preprocess.
std::vector<char> InputBytes(const std::vector<float>& pixels, const ffi::Map<ffi::Any, ffi::Any>& input,
                             const ffi::Map<ffi::Any, ffi::Any>& preprocess) {
  auto range = Arr(preprocess.at("value_range"));
  const double lo = Num(range[0]), hi = Num(range[1]);
  const std::string dtype = input.at("dtype").cast<ffi::String>();
  const Quantization q = QuantizationOf(input);
  std::vector<char> bytes;
  for (float p : pixels) {
    const double x = lo + p / 255.0 * (hi - lo);
    if (dtype == "float32") {
      float f = static_cast<float>(x);
      bytes.insert(bytes.end(), reinterpret_cast<char*>(&f), reinterpret_cast<char*>(&f) + 4);
    } else {
      const double lo_q = dtype == "int8" ? -128 : 0, hi_q = dtype == "int8" ? 127 : 255;
      const double v = std::clamp(std::nearbyint(x / q.scale) + q.zero_point, lo_q, hi_q);
      bytes.push_back(static_cast<char>(static_cast<int>(v)));
    }
  }
  return bytes;
}

// The first output as floats (dequantized when integer).
std::vector<double> Scores(const Tensor& out, const ffi::Map<ffi::Any, ffi::Any>& spec) {
  const Quantization q = QuantizationOf(spec);
  const size_t count = static_cast<size_t>(out.numel());
  const DLDataType dtype = out.dtype();
  if (!(dtype.code == kDLFloat && dtype.bits == 32) && dtype.bits != 8)
    throw std::runtime_error("the first output is neither float32 nor 8-bit integer scores");
  const char* raw = static_cast<const char*>(out.data_ptr());  // CPU memory: read in place
  std::vector<double> scores(count);
  for (size_t i = 0; i < count; ++i) {
    if (dtype.code == kDLFloat) scores[i] = reinterpret_cast<const float*>(raw)[i];
    else if (dtype.code == kDLInt) scores[i] = (reinterpret_cast<const int8_t*>(raw)[i] - q.zero_point) * q.scale;
    else scores[i] = (reinterpret_cast<const uint8_t*>(raw)[i] - q.zero_point) * q.scale;
  }
  return scores;
}

int Run(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: classify ARTIFACT_DIR IMAGE [--top K] [--threads N] [--save-input FILE]\n");
    return 2;
  }
  const std::string dir = argv[1], image = argv[2];
  int top = 5, threads = 0;
  std::string save_input;
  for (int i = 3; i < argc; i += 2) {
    const std::string flag = argv[i];
    if (i + 1 >= argc) throw std::invalid_argument(flag + " needs a value");
    if (flag == "--top") top = std::atoi(argv[i + 1]);
    else if (flag == "--threads") threads = std::atoi(argv[i + 1]);
    else if (flag == "--save-input") save_input = argv[i + 1];
    else throw std::invalid_argument("unknown option " + flag);
  }
  if (top < 1) throw std::invalid_argument("--top takes a whole number of at least 1");
  if (threads < 0) throw std::invalid_argument("--threads takes a whole number of at least 1");

  ffi::String error;
  ffi::Any parsed = ffi::json::Parse(ReadText(dir + "/manifest.json"), &error);
  if (!error.empty()) throw std::runtime_error(dir + "/manifest.json: " + std::string(error));
  auto manifest = Obj(parsed);
  auto app = Obj(manifest.at("app"));
  if (app.at("runtime").cast<ffi::String>() != "relax-vm" || app.at("device").cast<ffi::String>() != "cpu")
    throw std::runtime_error("this example runs CPU models (manifest app.runtime relax-vm, app.device cpu)");
  if (app.at("preprocess") == nullptr) throw std::runtime_error("the model's input is not a picture");
  auto input = Obj(Arr(manifest.at("inputs"))[0]);
  auto output = Obj(Arr(manifest.at("outputs"))[0]);
  auto shape = Arr(input.at("shape"));
  const int height = static_cast<int>(Num(shape[1])), width = static_cast<int>(Num(shape[2]));

  // The thread pool reads TVM_NUM_THREADS when it starts (on the first inference); the manifest says
  // how many the model was built for. Without it TVM runs every core on ARM but half of them on x86.
  if (threads == 0 && app.at("threads") != nullptr) threads = static_cast<int>(Num(app.at("threads")));
  if (threads > 0) setenv("TVM_NUM_THREADS", std::to_string(threads).c_str(), 1);
  // And how long its idle workers spin before they sleep: TVM's default keeps a core busy long after
  // each inference, taken from the app's own threads. A value already in the environment stays.
  if (app.count("thread_pool_spin_count") && app.at("thread_pool_spin_count") != nullptr)
    setenv("TVM_THREAD_POOL_SPIN_COUNT",
           std::to_string(static_cast<long>(Num(app.at("thread_pool_spin_count")))).c_str(), 0);

  int w = 0, h = 0, channels = 0;
  unsigned char* rgb = stbi_load(image.c_str(), &w, &h, &channels, 3);
  if (rgb == nullptr) throw std::runtime_error("cannot read the image " + image + ": " + stbi_failure_reason());
  std::vector<float> pixels = Resize(rgb, w, h, width, height);
  stbi_image_free(rgb);
  std::vector<char> bytes = InputBytes(pixels, input, Obj(app.at("preprocess")));
  if (!save_input.empty()) std::ofstream(save_input, std::ios::binary).write(bytes.data(), bytes.size());

  // The calling sequence of manifest app.calling_sequence.
  DLDevice cpu{kDLCPU, 0};
  const std::string library = Obj(manifest.at("library")).at("file").cast<ffi::String>();
  ffi::Module lib = ffi::Module::LoadFromFile(dir + "/" + library);
  ffi::Module vm = Fn(lib, "vm_load_executable")().cast<ffi::Module>();
  const int pooled = 2;
  Fn(vm, "vm_initialization")(static_cast<int>(kDLCPU), 0, pooled, static_cast<int>(kDLCPU), 0, pooled);
  std::vector<int64_t> dims;
  for (const auto& d : shape) dims.push_back(static_cast<int64_t>(Num(d)));
  Tensor x = Tensor::FromNDAlloc(HostAlloc(), ffi::Shape(dims), DataTypeOf(input.at("dtype").cast<ffi::String>()), cpu);
  std::memcpy(x.data_ptr(), bytes.data(), bytes.size());
  const ffi::String entry = app.at("entry").cast<ffi::String>();
  Fn(vm, "set_input")(entry, x);
  Fn(vm, "invoke_stateful")(entry);
  // get_output_arity: -1 for a single tensor, else the tuple's size (the first output is index 0).
  const bool tuple = Fn(vm, "get_output_arity")(entry).cast<int>() != -1;
  Tensor out = (tuple ? Fn(vm, "get_output")(entry, 0) : Fn(vm, "get_output")(entry)).cast<Tensor>();
  const auto threads_run = Global("runtime.NumThreads")().cast<int>();

  std::vector<std::string> labels;
  if (app.at("labels") != nullptr) {
    std::istringstream lines(ReadText(dir + "/" + std::string(app.at("labels").cast<ffi::String>())));
    for (std::string line; std::getline(lines, line);) labels.push_back(line);
  }
  std::vector<double> scores = Scores(out, output);
  std::vector<size_t> order(scores.size());
  std::iota(order.begin(), order.end(), 0);
  top = std::min<int>(top, static_cast<int>(order.size()));
  std::partial_sort(order.begin(), order.begin() + top, order.end(),
                    [&](size_t a, size_t b) { return scores[a] > scores[b] || (scores[a] == scores[b] && a < b); });
  std::printf("%s: %dx%d input, %d threads\n", image.c_str(), width, height, threads_run);
  for (int k = 0; k < top; ++k) {
    const size_t c = order[k];
    std::printf("%d\t%zu\t%.6f\t%s\n", k + 1, c, scores[c], c < labels.size() ? labels[c].c_str() : "");
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return Run(argc, argv);
  } catch (const std::exception& err) {
    std::fprintf(stderr, "error: %s\n", err.what());
    return 2;
  }
}
