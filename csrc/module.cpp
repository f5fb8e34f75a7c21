// pybind11 module `engine_export._native`: the native host, its pieces (schedule, noise, RoPE,
// slots) for tests, and the callback backend through which Python drives a runtime
// (ONNX Runtime in the tests) behind the host.
#include <pybind11/functional.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>
#include <cstring>

#include "host.hpp"

namespace py = pybind11;
using namespace we;

namespace {

py::dtype np_dtype(DType d) {
  switch (d) {
    case DType::Float32: return py::dtype("float32");
    case DType::Float16: return py::dtype("float16");
    case DType::Int64: return py::dtype("int64");
    case DType::Bool: return py::dtype("bool");
    case DType::BFloat16: break;
  }
  throw std::invalid_argument("the callback backend cannot pass bfloat16 tensors (numpy has no bfloat16); use TensorRT");
}

// A numpy array of `spec`'s dtype and shape holding a copy of `bytes`.
py::array make_array(const TensorSpec& spec, const void* bytes) {
  py::array a(np_dtype(spec.dtype), spec.shape);
  std::memcpy(a.mutable_data(), bytes, static_cast<size_t>(spec.numel()) * dtype_size(spec.dtype));
  return a;
}

// The bytes of an output array, checked against its spec.
py::array checked(py::handle obj, const TensorSpec& spec, const std::string& graph) {
  py::array a = py::array::ensure(obj, py::array::c_style);
  if (!a) throw std::runtime_error("graph '" + graph + "' output '" + spec.name + "' is not an array");
  if (!a.dtype().is(np_dtype(spec.dtype)) || a.size() != spec.numel())
    throw std::runtime_error("graph '" + graph + "' output '" + spec.name + "' has the wrong dtype or size");
  return a;
}

// Backend that hands each graph call to a Python callable
//   run(graph_name: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]
// and keeps the KV cache and the text context itself (host memory, graph precision).
class CallbackBackend : public Backend {
 public:
  explicit CallbackBackend(py::function run) : run_(std::move(run)) {}

  void begin(const Manifest& m, const GraphInfo& context, const std::vector<const GraphInfo*>& steps) override {
    const TensorSpec& ck = steps.front()->input("cache_k");
    for (const auto* g : steps)
      if (g->input("cache_k").shape != ck.shape) throw std::runtime_error("step graphs disagree on the cache shape");
    cache_spec_ = ck;
    cache_k_.assign(static_cast<size_t>(ck.numel()) * dtype_size(ck.dtype), 0);
    cache_v_.assign(cache_k_.size(), 0);
    (void)m;
    (void)context;
    calls_ = 0;
  }

  void encode_context(const GraphInfo& g, const std::vector<float>& text) override {
    const TensorSpec& t = g.input("text_embeds");
    if (static_cast<int64_t>(text.size()) != t.numel()) throw std::invalid_argument("text does not match the context graph's input");
    py::dict feeds;
    feeds["text_embeds"] = make_array(t, pack(text, t.dtype).data());
    py::dict out = run_(g.name, feeds);
    cross_k_ = checked(out["cross_k"], g.output("cross_k"), g.name);
    cross_v_ = checked(out["cross_v"], g.output("cross_v"), g.name);
  }

  std::vector<float> step(const GraphInfo& g, const StepInputs& in) override {
    py::dict feeds;
    const TensorSpec& lat = g.input("latents");
    feeds["latents"] = make_array(lat, pack(in.latents, lat.dtype).data());
    feeds["timestep"] = make_array(g.input("timestep"), in.timestep.data());
    feeds["cross_k"] = cross_k_;
    feeds["cross_v"] = cross_v_;
    feeds["rope_cos"] = make_array(g.input("rope_cos"), in.rope_cos.data());
    feeds["rope_sin"] = make_array(g.input("rope_sin"), in.rope_sin.data());
    feeds["cache_k"] = make_array(g.input("cache_k"), cache_k_.data());
    feeds["cache_v"] = make_array(g.input("cache_v"), cache_v_.data());
    feeds["write_index"] = make_array(g.input("write_index"), in.write_index.data());
    feeds["visibility"] = make_array(g.input("visibility"), in.visibility.data());
    py::dict out = run_(g.name, feeds);
    const TensorSpec& vs = g.output("velocity");
    py::array v = checked(out["velocity"], vs, g.name);
    py::array nk = checked(out["new_k"], g.output("new_k"), g.name);
    py::array nv = checked(out["new_v"], g.output("new_v"), g.name);
    const auto& s = cache_spec_.shape;  // [L, B, H, N, D]
    const int64_t outer = s[0] * s[1] * s[2];
    const size_t es = dtype_size(cache_spec_.dtype);
    scatter_rows(cache_k_.data(), static_cast<const uint8_t*>(nk.data()), in.write_index, outer, s[3], s[4], es);
    scatter_rows(cache_v_.data(), static_cast<const uint8_t*>(nv.data()), in.write_index, outer, s[3], s[4], es);
    ++calls_;
    return unpack(static_cast<const uint8_t*>(v.data()), static_cast<size_t>(vs.numel()), vs.dtype);
  }

  int calls() const { return calls_; }

 private:
  py::function run_;
  TensorSpec cache_spec_;
  std::vector<uint8_t> cache_k_, cache_v_;
  py::array cross_k_, cross_v_;
  int calls_ = 0;
};

std::vector<float> to_floats(py::array_t<float, py::array::c_style | py::array::forcecast> a) {
  return std::vector<float>(a.data(), a.data() + a.size());
}

py::array_t<float> to_array(const std::vector<float>& v, std::vector<py::ssize_t> shape) {
  py::array_t<float> a(shape);
  std::memcpy(a.mutable_data(), v.data(), v.size() * sizeof(float));
  return a;
}

}  // namespace

PYBIND11_MODULE(_native, mod) {
  mod.doc() = "worldengine native host (C++17): manifest, schedule, noise, KV slots, rollout driver";
  py::register_exception<ManifestError>(mod, "ManifestError", PyExc_ValueError);

  mod.attr("SCHEMA_VERSION") = kSchemaVersion;
#ifdef WE_WITH_TENSORRT
  mod.attr("HAS_TENSORRT") = true;
#else
  mod.attr("HAS_TENSORRT") = false;
#endif

  mod.def("few_step_sigmas", &few_step_sigmas, py::arg("timesteps"), py::arg("shift"));
  mod.def("flow_sigmas", &flow_sigmas, py::arg("num_steps"), py::arg("shift"));
  mod.def("splitmix64", &splitmix64);
  mod.def("frame_seed", &frame_seed, py::arg("seed"), py::arg("stream"), py::arg("position"));
  mod.def(
      "counter_noise",
      [](int64_t seed, int64_t stream, std::vector<int64_t> positions, int C, int h, int w) {
        return to_array(counter_noise(seed, stream, positions, C, h, w),
                        {C, static_cast<py::ssize_t>(positions.size()), h, w});
      },
      py::arg("seed"), py::arg("stream"), py::arg("positions"), py::arg("channels"), py::arg("height"), py::arg("width"),
      "Built-in counter-based-v1 normal noise [C, n, h, w] (not torch.randn).");
  mod.def(
      "rope_tables",
      [](std::vector<int64_t> positions, int gh, int gw, std::array<int, 3> split, double theta) {
        std::vector<float> c, s;
        rope_tables(positions, gh, gw, split.data(), theta, c, s);
        py::ssize_t half = (split[0] / 2 + split[1] / 2 + split[2] / 2);
        py::ssize_t S = static_cast<py::ssize_t>(positions.size()) * gh * gw;
        return py::make_tuple(to_array(c, {S, half}), to_array(s, {S, half}));
      },
      py::arg("positions"), py::arg("grid_height"), py::arg("grid_width"), py::arg("split"), py::arg("theta"));

  py::class_<SlotCache>(mod, "SlotCache")
      .def(py::init<int, int, int, int, int>(), py::arg("tokens_per_frame"), py::arg("chunk_frames"),
           py::arg("sink_frames") = 0, py::arg("window_frames") = -1, py::arg("max_frames") = 0)
      .def("slot_of", &SlotCache::slot_of)
      .def("visible", &SlotCache::visible)
      .def_property_readonly("num_slots", &SlotCache::num_slots)
      .def("slot_positions", &SlotCache::slot_positions)
      .def("claim", [](SlotCache& c, std::vector<int64_t> positions) {
        ChunkSlots cs = c.claim(positions);
        return py::make_tuple(cs.slots, cs.write_index, cs.visibility);
      });

  py::class_<Backend>(mod, "Backend");
  py::class_<CallbackBackend, Backend>(mod, "CallbackBackend")
      .def(py::init<py::function>(), py::arg("run"),
           "run(graph_name, feeds: dict[str, ndarray]) -> dict[str, ndarray] executes one graph of the manifest")
      .def_property_readonly("calls", &CallbackBackend::calls);
#ifdef WE_WITH_TENSORRT
  mod.def("tensorrt_backend", &make_tensorrt_backend, py::arg("device") = 0);
#endif

  py::class_<Host>(mod, "Host")
      .def(py::init([](const std::string& dir, bool verify) { return Host(Manifest::load(dir, verify)); }),
           py::arg("directory"), py::arg("verify_hashes") = true)
      .def("sigmas", &Host::sigmas)
      .def_property_readonly("model_name", [](const Host& h) { return h.manifest().model.name; })
      .def_property_readonly("precision", [](const Host& h) { return h.manifest().precision; })
      .def_property_readonly("graphs", [](const Host& h) {
        std::vector<std::string> n;
        for (const auto& g : h.manifest().graphs) n.push_back(g.name);
        return n;
      })
      .def(
          "rollout",
          [](const Host& h, Backend& backend, py::array_t<float, py::array::c_style | py::array::forcecast> text,
             int num_frames, int64_t seed, int chunk_frames, int sink_frames, py::object window_frames,
             std::pair<int, int> latent_hw, double guidance_scale, py::object first_latent, py::object noise, int opset,
             py::object on_chunk) {
            RolloutOptions o;
            o.num_frames = num_frames;
            o.seed = seed;
            o.chunk_frames = chunk_frames;
            o.sink_frames = sink_frames;
            o.window_frames = window_frames.is_none() ? -1 : window_frames.cast<int>();
            o.latent_height = latent_hw.first;
            o.latent_width = latent_hw.second;
            o.guidance_scale = guidance_scale;
            o.opset = opset;
            if (!first_latent.is_none()) o.first_latent = to_floats(first_latent.cast<py::array>());
            NoiseFn nz = nullptr;
            if (!noise.is_none()) {
              py::function f = noise.cast<py::function>();
              nz = [f](int64_t s, int64_t st, const std::vector<int64_t>& p, int C, int hh, int ww) {
                return to_floats(f(s, st, p, C, hh, ww).cast<py::array>());
              };
            }
            std::function<void(const Chunk&)> cb = nullptr;
            if (!on_chunk.is_none()) {
              py::function f = on_chunk.cast<py::function>();
              cb = [f](const Chunk& c) {
                f(c.positions, to_array(c.latents, {static_cast<py::ssize_t>(c.latents.size())}));
              };
            }
            std::vector<Chunk> chunks = h.rollout(backend, to_floats(text), o, nz, cb);
            py::list out;
            for (const auto& c : chunks) out.append(py::make_tuple(c.positions, to_array(c.latents, {static_cast<py::ssize_t>(c.latents.size())})));
            return out;
          },
          py::arg("backend"), py::arg("text"), py::kw_only(), py::arg("num_frames"), py::arg("seed") = 0,
          py::arg("chunk_frames") = 0, py::arg("sink_frames") = 0, py::arg("window_frames") = py::none(),
          py::arg("latent_hw") = std::pair<int, int>(0, 0), py::arg("guidance_scale") = 1.0,
          py::arg("first_latent") = py::none(), py::arg("noise") = py::none(), py::arg("opset") = 0,
          py::arg("on_chunk") = py::none(),
          "Run a full chunked rollout; returns [(positions, flat float32 latents [C*n*h*w])].");
}
