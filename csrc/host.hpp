// worldengine native host: reads an export manifest, owns the sampler schedule, the
// noise initialisation and the KV-slot bookkeeping, and drives a Backend (TensorRT, or a
// callback) through a full block-autoregressive rollout -- without Python.
//
// Its schedule, noise addressing, slot logic and per-step float32 arithmetic mirror
// engine/rollout.py, engine/sampling.py, engine/kvcache.py and kernels/noise.py exactly.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "json.hpp"

namespace we {

constexpr int kSchemaVersion = 1;
constexpr const char* kSchemaId = "worldengine.export.manifest";

// A manifest is missing, corrupt or does not match its files.
class ManifestError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

enum class DType { Float32, Float16, BFloat16, Int64, Bool };
DType parse_dtype(const std::string& s);
size_t dtype_size(DType d);

struct TensorSpec {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  int64_t numel() const;
};

struct GraphInfo {
  std::string name, kind, file, sha256, precision;
  int opset = 0;
  // bucket (step / block graphs; context graphs only batch and text_len)
  int frames = 0, latent_height = 0, latent_width = 0, batch = 0, cache_slots = 0, text_len = 0;
  int tokens_per_frame = 0;
  std::vector<TensorSpec> inputs, outputs;
  std::vector<std::pair<std::string, std::string>> external_data;  // (file, sha256)
  const TensorSpec& input(const std::string& n) const;
  const TensorSpec& output(const std::string& n) const;
};

struct EngineInfo {
  std::string graph, file, sha256, tensorrt_version, sm;
};

struct ModelInfo {
  std::string name;
  int in_channels = 0, out_channels = 0, dim = 0, num_heads = 0, num_layers = 0, text_dim = 0, text_len = 0;
  int patch[3] = {1, 2, 2};
  double rope_theta = 10000.0;
  int rope_split[3] = {0, 0, 0};
  bool i2v = false;
  int head_dim() const { return dim / num_heads; }
};

struct SamplerInfo {
  std::string kind;  // fewstep | euler (unipc: not supported by the host)
  double shift = 5.0;
  int num_steps = 4;
  std::vector<double> timesteps;  // fewstep
  std::vector<double> sigmas;     // as recorded; the host recomputes and compares
  double guidance_scale = 1.0;
};

struct Manifest {
  std::string directory;
  int schema_version = 0;
  std::string precision;
  ModelInfo model;
  SamplerInfo sampler;
  int chunk_frames = 3, cache_slots = 21;
  std::vector<GraphInfo> graphs;
  std::vector<EngineInfo> engines;

  // Parse + check `dir/manifest.json`; verify file presence (and SHA-256 when asked).
  static Manifest load(const std::string& dir, bool verify_hashes = true);
  // The highest-opset graph of `kind` for a bucket (frames <= 0: any), or nullptr.
  const GraphInfo* find(const std::string& kind, int frames, int height, int width, int batch, int opset = 0) const;
  std::string path(const std::string& file) const { return directory + "/" + file; }
};

// ---- schedule --------------------------------------------------------------------
// fewstep: sigma_i = k s / (1 + (k-1) s), s = t_i / 1000, then a terminal 0 (float64).
std::vector<double> few_step_sigmas(const std::vector<double>& timesteps, double shift);
// euler: the same shift of torch.linspace(1, 0, N+1) (float64), endpoints pinned to 1 and 0.
std::vector<double> flow_sigmas(int num_steps, double shift);

// ---- noise -----------------------------------------------------------------------
uint64_t splitmix64(uint64_t x);
uint64_t frame_seed(int64_t seed, int64_t stream, int64_t position);
// Built-in counter-based normal noise ("counter-based-v1"): element i of a frame draws
// u1, u2 from splitmix64(frame_seed + 2i + {1, 2}) (53-bit uniforms in (0, 1]) and
// returns float32(sqrt(-2 log u1) cos(2 pi u2)). Output [C, n, h, w] for `positions`.
std::vector<float> counter_noise(int64_t seed, int64_t stream, const std::vector<int64_t>& positions, int C, int h, int w);
// A noise source: (seed, stream, positions, C, h, w) -> float32 [C, n, h, w].
using NoiseFn = std::function<std::vector<float>(int64_t, int64_t, const std::vector<int64_t>&, int, int, int)>;

// ---- RoPE --------------------------------------------------------------------------
// Real RoPE tables [n*gh*gw, head_dim/2] (token order frame, row, col), float64 angles.
void rope_tables(const std::vector<int64_t>& positions, int gh, int gw, const int split[3], double theta,
                 std::vector<float>& cos_out, std::vector<float>& sin_out);

// ---- KV-slot bookkeeping (engine/kvcache.py) ---------------------------------------
struct ChunkSlots {
  std::vector<int64_t> positions, slots, write_index;
  std::vector<std::vector<uint8_t>> visibility;  // [n][num_slots]
};

class SlotCache {
 public:
  // window_frames < 0: unbounded (ring = max(max_frames - sink, chunk)).
  SlotCache(int tokens_per_frame, int chunk_frames, int sink_frames, int window_frames, int max_frames);
  int64_t slot_of(int64_t position) const;
  bool visible(int64_t query_start, int64_t query_end, int64_t key_position) const;
  ChunkSlots claim(const std::vector<int64_t>& positions);
  int num_slots() const { return sink_ + ring_; }
  const std::vector<int64_t>& slot_positions() const { return slot_pos_; }

 private:
  int tpf_, chunk_, sink_, window_, ring_;
  std::vector<int64_t> slot_pos_;
};

// ---- backends ------------------------------------------------------------------------
// Host-side float32 inputs of one step; the backend casts to the graph precision.
struct StepInputs {
  std::vector<float> latents;      // [B, C_in, n, h, w]
  std::vector<float> timestep;     // [B, n]
  std::vector<float> rope_cos, rope_sin;
  std::vector<int64_t> write_index;
  std::vector<uint8_t> visibility;  // [1, 1, n, S]
};

class Backend {
 public:
  virtual ~Backend() = default;
  // A new rollout: allocate (and zero) the cache of every step graph of `steps`.
  virtual void begin(const Manifest& m, const GraphInfo& context, const std::vector<const GraphInfo*>& steps) = 0;
  // Run the context graph on text [B, L, text_dim] float32; keep cross_k / cross_v.
  virtual void encode_context(const GraphInfo& g, const std::vector<float>& text) = 0;
  // Run a step graph against the backend's cache, write new_k / new_v into the cache at
  // write_index, return the velocity as float32 [B, C_out, n, h, w].
  virtual std::vector<float> step(const GraphInfo& g, const StepInputs& in) = 0;
};

// ---- the rollout ---------------------------------------------------------------------
struct RolloutOptions {
  int num_frames = 0;  // latent frames
  int64_t seed = 0;
  int chunk_frames = 0;    // 0: the manifest's
  int sink_frames = 0;
  int window_frames = -1;  // < 0: unbounded
  int latent_height = 0, latent_width = 0;  // 0: the only exported size
  double guidance_scale = 1.0;              // > 1 needs text with 2 rows (cond, uncond)
  std::vector<float> first_latent;          // [C, 1, h, w]: frame 0 given
  int opset = 0;                            // 0: highest exported
};

struct Chunk {
  std::vector<int64_t> positions;
  std::vector<float> latents;  // [C, n, h, w] float32 (clean)
};

class Host {
 public:
  explicit Host(Manifest m) : m_(std::move(m)) {}
  const Manifest& manifest() const { return m_; }
  // The schedule the host runs (recomputed; must equal the manifest's sigmas).
  std::vector<double> sigmas() const;
  // Run a whole rollout; `noise` defaults to counter_noise. `on_chunk` sees each clean
  // chunk as soon as it is done (streaming); the chunks are also returned.
  std::vector<Chunk> rollout(Backend& backend, const std::vector<float>& text, const RolloutOptions& opt,
                             NoiseFn noise = nullptr, std::function<void(const Chunk&)> on_chunk = nullptr) const;

 private:
  Manifest m_;
};

// float <-> half / bfloat16 (round to nearest even), for backends fed in reduced precision.
uint16_t float_to_half(float f);
float half_to_float(uint16_t h);
uint16_t float_to_bf16(float f);
float bf16_to_float(uint16_t h);
// Cast float32 values to `d` (float32 / float16 / bfloat16) bytes, and back.
std::vector<uint8_t> pack(const std::vector<float>& v, DType d);
std::vector<float> unpack(const uint8_t* p, size_t n, DType d);
// Write the chunk's new entries [L, B, H, T, D] into a cache [L, B, H, N, D] at rows `index` (element bytes `es`).
void scatter_rows(uint8_t* cache, const uint8_t* entries, const std::vector<int64_t>& index, int64_t outer, int64_t N,
                  int64_t D, size_t es);

#ifdef WE_WITH_TENSORRT
// TensorRT backend: engines from the manifest (this TensorRT version and GPU SM), cache and
// cross-attention keys/values resident on the GPU, new entries scattered with cudaMemcpy2D.
std::unique_ptr<Backend> make_tensorrt_backend(int device = 0);
#endif

}  // namespace we
