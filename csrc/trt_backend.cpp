// TensorRT backend of the native host. Compiled only where TensorRT's and CUDA's headers
// are found (setup.py defines WE_WITH_TENSORRT); written against the TensorRT 10 C++ API
// (IRuntime::deserializeCudaEngine, IExecutionContext::setInputShape / setTensorAddress /
// enqueueV3). NOT compiled or run on the CPU machines this project is built on.
//
// Every I/O tensor lives in a device buffer allocated once per rollout, so tensor
// addresses never change: the first call of each step engine runs eagerly, the second is
// captured into a CUDA graph, later calls replay it. The KV cache (cache_k / cache_v) and
// the cross-attention keys/values (the context engine's outputs) are shared device
// buffers; after each step the chunk's new entries are copied into the cache with one
// cudaMemcpy2DAsync per frame (a frame's token rows are contiguous in every [L, B, H] row).
#ifdef WE_WITH_TENSORRT

#include <NvInfer.h>
#include <NvInferVersion.h>
#include <cuda_runtime_api.h>

#include <cstdio>
#include <fstream>
#include <iterator>
#include <map>
#include <memory>
#include <sstream>

#include "host.hpp"

namespace we {
namespace {

#define WE_CUDA(expr)                                                                                  \
  do {                                                                                                 \
    cudaError_t _e = (expr);                                                                           \
    if (_e != cudaSuccess) throw std::runtime_error(std::string(#expr) + ": " + cudaGetErrorString(_e)); \
  } while (0)

class TrtLogger : public nvinfer1::ILogger {
 public:
  void log(Severity severity, const char* msg) noexcept override {
    if (severity <= Severity::kWARNING) std::fprintf(stderr, "[TensorRT] %s\n", msg);
  }
};

struct DeviceBuffer {
  void* ptr = nullptr;
  size_t bytes = 0;
  DeviceBuffer() = default;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer() {
    if (ptr) cudaFree(ptr);
  }
  void alloc(size_t b) {
    if (ptr) cudaFree(ptr);
    ptr = nullptr;
    bytes = b;
    WE_CUDA(cudaMalloc(&ptr, b));
    WE_CUDA(cudaMemset(ptr, 0, b));
  }
};

std::string trt_version() {
  return std::to_string(NV_TENSORRT_MAJOR) + "." + std::to_string(NV_TENSORRT_MINOR) + "." + std::to_string(NV_TENSORRT_PATCH);
}

size_t bytes_of(const TensorSpec& t) { return static_cast<size_t>(t.numel()) * dtype_size(t.dtype); }

struct EngineRun {
  std::unique_ptr<nvinfer1::ICudaEngine> engine;
  std::unique_ptr<nvinfer1::IExecutionContext> ctx;
  std::map<std::string, DeviceBuffer> own;  // per-engine I/O buffers (not cache / cross k,v)
  cudaGraphExec_t graph = nullptr;
  int calls = 0;
  ~EngineRun() {
    if (graph) cudaGraphExecDestroy(graph);
  }
};

class TrtBackend : public Backend {
 public:
  explicit TrtBackend(int device) : device_(device) {
    WE_CUDA(cudaSetDevice(device_));
    WE_CUDA(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    cudaDeviceProp prop{};
    WE_CUDA(cudaGetDeviceProperties(&prop, device_));
    sm_ = std::to_string(prop.major) + std::to_string(prop.minor);
    runtime_.reset(nvinfer1::createInferRuntime(logger_));
    if (!runtime_) throw std::runtime_error("TensorRT: createInferRuntime failed");
  }
  ~TrtBackend() override {
    runs_.clear();
    if (stream_) cudaStreamDestroy(stream_);
  }

  void begin(const Manifest& m, const GraphInfo& context, const std::vector<const GraphInfo*>& steps) override {
    runs_.clear();
    load(m, context);
    for (const auto* g : steps)
      if (!runs_.count(g->name)) load(m, *g);
    const TensorSpec& ck = steps.front()->input("cache_k");
    cache_k_.alloc(bytes_of(ck));
    cache_v_.alloc(bytes_of(ck));
    cache_spec_ = ck;
    const TensorSpec& xk = context.output("cross_k");
    cross_k_.alloc(bytes_of(xk));
    cross_v_.alloc(bytes_of(xk));
    for (auto& [name, run] : runs_) bind(*run, *graphs_.at(name));
  }

  void encode_context(const GraphInfo& g, const std::vector<float>& text) override {
    EngineRun& r = *runs_.at(g.name);
    const TensorSpec& t = g.input("text_embeds");
    upload(r, t, pack(text, t.dtype).data());
    if (!r.ctx->enqueueV3(stream_)) throw std::runtime_error("TensorRT enqueueV3 failed for " + g.name);
    WE_CUDA(cudaStreamSynchronize(stream_));
  }

  std::vector<float> step(const GraphInfo& g, const StepInputs& in) override {
    EngineRun& r = *runs_.at(g.name);
    const TensorSpec& lat = g.input("latents");
    upload(r, lat, pack(in.latents, lat.dtype).data());
    upload(r, g.input("timestep"), in.timestep.data());
    upload(r, g.input("rope_cos"), in.rope_cos.data());
    upload(r, g.input("rope_sin"), in.rope_sin.data());
    upload(r, g.input("write_index"), in.write_index.data());
    upload(r, g.input("visibility"), in.visibility.data());
    if (r.graph) {
      WE_CUDA(cudaGraphLaunch(r.graph, stream_));
    } else if (r.calls >= 1) {  // second call: capture (the first one ran eagerly, as TensorRT advises)
      cudaGraph_t graph;
      WE_CUDA(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal));
      const bool ok = r.ctx->enqueueV3(stream_);
      WE_CUDA(cudaStreamEndCapture(stream_, &graph));
      if (!ok) throw std::runtime_error("TensorRT enqueueV3 failed during CUDA-graph capture of " + g.name);
      WE_CUDA(cudaGraphInstantiate(&r.graph, graph, 0));
      cudaGraphDestroy(graph);
      WE_CUDA(cudaGraphLaunch(r.graph, stream_));
    } else if (!r.ctx->enqueueV3(stream_)) {
      throw std::runtime_error("TensorRT enqueueV3 failed for " + g.name);
    }
    ++r.calls;
    // commit the chunk's entries: one 2-D copy per frame ([L*B*H] rows of tpf*D elements)
    const auto& s = cache_spec_.shape;  // [L, B, H, N, D]
    const size_t es = dtype_size(cache_spec_.dtype);
    const size_t rows = static_cast<size_t>(s[0] * s[1] * s[2]);
    const size_t T = in.write_index.size(), tpf = static_cast<size_t>(g.tokens_per_frame);
    const size_t row_bytes = static_cast<size_t>(s[4]) * es;
    for (const char* which : {"k", "v"}) {
      uint8_t* dst = static_cast<uint8_t*>(which[0] == 'k' ? cache_k_.ptr : cache_v_.ptr);
      const uint8_t* src = static_cast<const uint8_t*>(r.own.at(std::string("new_") + which).ptr);
      for (size_t f = 0; f < T / tpf; ++f) {
        const size_t first = static_cast<size_t>(in.write_index[f * tpf]);
        WE_CUDA(cudaMemcpy2DAsync(dst + first * row_bytes, static_cast<size_t>(s[3]) * row_bytes, src + f * tpf * row_bytes,
                                  T * row_bytes, tpf * row_bytes, rows, cudaMemcpyDeviceToDevice, stream_));
      }
    }
    const TensorSpec& vs = g.output("velocity");
    std::vector<uint8_t> host(bytes_of(vs));
    WE_CUDA(cudaMemcpyAsync(host.data(), r.own.at("velocity").ptr, host.size(), cudaMemcpyDeviceToHost, stream_));
    WE_CUDA(cudaStreamSynchronize(stream_));
    return unpack(host.data(), static_cast<size_t>(vs.numel()), vs.dtype);
  }

 private:
  int device_;
  std::string sm_;
  cudaStream_t stream_ = nullptr;
  TrtLogger logger_;
  std::unique_ptr<nvinfer1::IRuntime> runtime_;
  std::map<std::string, std::unique_ptr<EngineRun>> runs_;
  std::map<std::string, const GraphInfo*> graphs_;
  DeviceBuffer cache_k_, cache_v_, cross_k_, cross_v_;
  TensorSpec cache_spec_;

  void load(const Manifest& m, const GraphInfo& g) {
    const EngineInfo* e = nullptr;
    for (const auto& cand : m.engines)
      if (cand.graph == g.name && cand.sm == sm_ && cand.tensorrt_version.rfind(trt_version(), 0) == 0) e = &cand;
    if (!e)
      throw std::runtime_error("no TensorRT " + trt_version() + " engine for graph '" + g.name + "' on sm" + sm_ +
                               " in the manifest; build one with `python -m engine_export trt DIR`");
    std::ifstream f(m.path(e->file), std::ios::binary);
    if (!f) throw std::runtime_error("cannot open engine " + m.path(e->file));
    std::string blob((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    auto run = std::make_unique<EngineRun>();
    run->engine.reset(runtime_->deserializeCudaEngine(blob.data(), blob.size()));
    if (!run->engine) throw std::runtime_error("TensorRT could not deserialize " + e->file);
    run->ctx.reset(run->engine->createExecutionContext());
    if (!run->ctx) throw std::runtime_error("TensorRT could not create an execution context for " + e->file);
    graphs_[g.name] = &g;
    runs_[g.name] = std::move(run);
  }

  void* shared(const std::string& name) {
    if (name == "cache_k") return cache_k_.ptr;
    if (name == "cache_v") return cache_v_.ptr;
    if (name == "cross_k") return cross_k_.ptr;
    if (name == "cross_v") return cross_v_.ptr;
    return nullptr;
  }

  void bind(EngineRun& r, const GraphInfo& g) {
    auto set = [&](const TensorSpec& t, bool input) {
      void* p = shared(t.name);
      if (!p) {
        r.own[t.name].alloc(bytes_of(t));
        p = r.own[t.name].ptr;
      }
      if (input) {
        nvinfer1::Dims d;
        d.nbDims = static_cast<int32_t>(t.shape.size());
        for (size_t i = 0; i < t.shape.size(); ++i) d.d[i] = t.shape[i];
        if (!r.ctx->setInputShape(t.name.c_str(), d)) throw std::runtime_error("TensorRT setInputShape failed for " + t.name);
      }
      if (!r.ctx->setTensorAddress(t.name.c_str(), p)) throw std::runtime_error("TensorRT setTensorAddress failed for " + t.name);
    };
    for (const auto& t : g.inputs) set(t, true);
    for (const auto& t : g.outputs) set(t, false);
  }

  void upload(EngineRun& r, const TensorSpec& t, const void* data) {
    WE_CUDA(cudaMemcpyAsync(r.own.at(t.name).ptr, data, bytes_of(t), cudaMemcpyHostToDevice, stream_));
  }
};

}  // namespace

std::unique_ptr<Backend> make_tensorrt_backend(int device) { return std::make_unique<TrtBackend>(device); }

}  // namespace we

#endif  // WE_WITH_TENSORRT
