// worldengine native host (see host.hpp). Build with -ffp-contract=off: the sampler's
// float32 arithmetic must round exactly like torch's separate elementwise kernels.
#include "host.hpp"

#include <cmath>
#include <cstring>
#include <fstream>
#include <sstream>
#include <sys/stat.h>

#include "sha256.hpp"

namespace we {

// ---------------------------------------------------------------------------------
// dtypes
// ---------------------------------------------------------------------------------
DType parse_dtype(const std::string& s) {
  if (s == "float32") return DType::Float32;
  if (s == "float16") return DType::Float16;
  if (s == "bfloat16") return DType::BFloat16;
  if (s == "int64") return DType::Int64;
  if (s == "bool") return DType::Bool;
  throw ManifestError("unknown dtype '" + s + "' in manifest");
}

size_t dtype_size(DType d) {
  switch (d) {
    case DType::Float32: return 4;
    case DType::Float16: case DType::BFloat16: return 2;
    case DType::Int64: return 8;
    case DType::Bool: return 1;
  }
  return 0;
}

int64_t TensorSpec::numel() const {
  int64_t n = 1;
  for (auto s : shape) n *= s;
  return n;
}

const TensorSpec& GraphInfo::input(const std::string& n) const {
  for (const auto& t : inputs)
    if (t.name == n) return t;
  throw ManifestError("graph '" + name + "' has no input '" + n + "'");
}

const TensorSpec& GraphInfo::output(const std::string& n) const {
  for (const auto& t : outputs)
    if (t.name == n) return t;
  throw ManifestError("graph '" + name + "' has no output '" + n + "'");
}

uint16_t float_to_half(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  uint32_t sign = (x >> 16) & 0x8000u;
  uint32_t ex = (x >> 23) & 0xFF;
  uint32_t man = x & 0x7FFFFFu;
  if (ex == 0xFF) return static_cast<uint16_t>(sign | 0x7C00u | (man ? 0x200u : 0));  // inf / nan
  int e = static_cast<int>(ex) - 127 + 15;
  if (e >= 31) return static_cast<uint16_t>(sign | 0x7C00u);  // overflow -> inf
  if (e <= 0) {                                                // subnormal or zero
    if (e < -10) return static_cast<uint16_t>(sign);
    man |= 0x800000u;
    int shift = 14 - e;
    uint32_t half = man >> shift;
    uint32_t rem = man & ((1u << shift) - 1);
    uint32_t mid = 1u << (shift - 1);
    if (rem > mid || (rem == mid && (half & 1))) ++half;
    return static_cast<uint16_t>(sign | half);
  }
  uint32_t half = (static_cast<uint32_t>(e) << 10) | (man >> 13);
  uint32_t rem = man & 0x1FFFu;
  if (rem > 0x1000u || (rem == 0x1000u && (half & 1))) ++half;  // may carry into the exponent: correct
  return static_cast<uint16_t>(sign | half);
}

float half_to_float(uint16_t h) {
  uint32_t sign = (uint32_t(h) & 0x8000u) << 16;
  uint32_t ex = (h >> 10) & 0x1F;
  uint32_t man = h & 0x3FFu;
  uint32_t x;
  if (ex == 0) {
    if (man == 0) {
      x = sign;
    } else {
      int e = -1;
      do { man <<= 1; ++e; } while (!(man & 0x400u));
      x = sign | (uint32_t(127 - 15 - e) << 23) | ((man & 0x3FFu) << 13);
    }
  } else if (ex == 31) {
    x = sign | 0x7F800000u | (man << 13);
  } else {
    x = sign | ((ex - 15 + 127) << 23) | (man << 13);
  }
  float f;
  std::memcpy(&f, &x, 4);
  return f;
}

uint16_t float_to_bf16(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  if ((x & 0x7F800000u) == 0x7F800000u && (x & 0x7FFFFFu)) return static_cast<uint16_t>((x >> 16) | 0x40);
  x += 0x7FFFu + ((x >> 16) & 1);
  return static_cast<uint16_t>(x >> 16);
}

float bf16_to_float(uint16_t h) {
  uint32_t x = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &x, 4);
  return f;
}

std::vector<uint8_t> pack(const std::vector<float>& v, DType d) {
  std::vector<uint8_t> out(v.size() * dtype_size(d));
  if (d == DType::Float32) {
    std::memcpy(out.data(), v.data(), out.size());
  } else if (d == DType::Float16 || d == DType::BFloat16) {
    auto* p = reinterpret_cast<uint16_t*>(out.data());
    for (size_t i = 0; i < v.size(); ++i) p[i] = d == DType::Float16 ? float_to_half(v[i]) : float_to_bf16(v[i]);
  } else {
    throw std::runtime_error("pack: not a floating dtype");
  }
  return out;
}

std::vector<float> unpack(const uint8_t* p, size_t n, DType d) {
  std::vector<float> out(n);
  if (d == DType::Float32) {
    std::memcpy(out.data(), p, n * 4);
  } else if (d == DType::Float16 || d == DType::BFloat16) {
    const auto* q = reinterpret_cast<const uint16_t*>(p);
    for (size_t i = 0; i < n; ++i) out[i] = d == DType::Float16 ? half_to_float(q[i]) : bf16_to_float(q[i]);
  } else {
    throw std::runtime_error("unpack: not a floating dtype");
  }
  return out;
}

void scatter_rows(uint8_t* cache, const uint8_t* entries, const std::vector<int64_t>& index, int64_t outer, int64_t N,
                  int64_t D, size_t es) {
  const int64_t T = static_cast<int64_t>(index.size());
  const size_t row = static_cast<size_t>(D) * es;
  for (int64_t o = 0; o < outer; ++o)
    for (int64_t j = 0; j < T; ++j)
      std::memcpy(cache + (o * N + index[j]) * row, entries + (o * T + j) * row, row);
}

// ---------------------------------------------------------------------------------
// manifest
// ---------------------------------------------------------------------------------
namespace {

bool file_exists(const std::string& p) {
  struct stat st;
  return ::stat(p.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

std::vector<TensorSpec> specs(const Json& arr, const std::string& where) {
  std::vector<TensorSpec> out;
  for (const auto& t : arr.array()) {
    TensorSpec s;
    s.name = t.at("name").string();
    s.dtype = parse_dtype(t.at("dtype").string());
    for (const auto& d : t.at("shape").array()) {
      int64_t v = d.integer();
      if (v < 1) throw ManifestError(where + ": tensor '" + s.name + "' has a non-positive dimension");
      s.shape.push_back(v);
    }
    out.push_back(std::move(s));
  }
  return out;
}

int opt_int(const Json& o, const std::string& k, int dflt) { return o.has(k) ? static_cast<int>(o.at(k).integer()) : dflt; }

std::string shape_str(const std::vector<int64_t>& s) {
  std::ostringstream os;
  os << "[";
  for (size_t i = 0; i < s.size(); ++i) os << (i ? ", " : "") << s[i];
  os << "]";
  return os.str();
}

void expect_shape(const GraphInfo& g, const TensorSpec& t, const std::vector<int64_t>& want) {
  if (t.shape != want)
    throw ManifestError("graph '" + g.name + "': tensor '" + t.name + "' is " + shape_str(t.shape) +
                        " in the manifest but the model and bucket imply " + shape_str(want));
}

}  // namespace

Manifest Manifest::load(const std::string& dir, bool verify_hashes) {
  Manifest m;
  m.directory = dir;
  std::string path = dir + "/manifest.json";
  std::ifstream f(path, std::ios::binary);
  if (!f) throw ManifestError("no manifest.json in " + dir + ": not an export folder");
  std::stringstream ss;
  ss << f.rdbuf();
  Json j;
  try {
    j = Json::parse(ss.str());
  } catch (const std::exception& e) {
    throw ManifestError(path + " is not valid JSON: " + e.what());
  }
  try {
    if (!j.has("schema") || j.at("schema").type != Json::Type::String || j.at("schema").string() != kSchemaId)
      throw ManifestError("not a worldengine export manifest: 'schema' is not '" + std::string(kSchemaId) + "'");
    m.schema_version = static_cast<int>(j.at("schema_version").integer());
    if (m.schema_version > kSchemaVersion)
      throw ManifestError("manifest schema_version " + std::to_string(m.schema_version) +
                          " is newer than this host supports (" + std::to_string(kSchemaVersion) +
                          "); upgrade the host or re-export");
    m.precision = j.at("precision").string();
    const Json& cfg = j.at("model").at("config");
    ModelInfo& mi = m.model;
    mi.name = j.at("model").at("name").string();
    mi.in_channels = static_cast<int>(cfg.at("in_channels").integer());
    mi.out_channels = static_cast<int>(cfg.at("out_channels").integer());
    mi.dim = static_cast<int>(cfg.at("dim").integer());
    mi.num_heads = static_cast<int>(cfg.at("num_heads").integer());
    mi.num_layers = static_cast<int>(cfg.at("num_layers").integer());
    mi.text_dim = static_cast<int>(cfg.at("text_dim").integer());
    mi.text_len = static_cast<int>(cfg.at("text_len").integer());
    for (int i = 0; i < 3; ++i) mi.patch[i] = static_cast<int>(cfg.at("patch_size").at(i).integer());
    mi.i2v = cfg.has("image_dim") && !cfg.at("image_dim").is_null();
    const Json& rope = j.at("rope");
    mi.rope_theta = rope.at("theta").number();
    for (int i = 0; i < 3; ++i) mi.rope_split[i] = static_cast<int>(rope.at("split").at(i).integer());
    if (mi.num_heads <= 0 || mi.dim % mi.num_heads)
      throw ManifestError("manifest.model.config: dim must be a positive multiple of num_heads");
    if (mi.rope_split[0] + mi.rope_split[1] + mi.rope_split[2] != mi.head_dim())
      throw ManifestError("manifest.rope.split does not add up to the head dim");

    const Json& s = j.at("sampler");
    m.sampler.kind = s.at("kind").string();
    m.sampler.shift = s.at("shift").number();
    m.sampler.num_steps = static_cast<int>(s.at("num_steps").integer());
    if (s.has("timesteps") && !s.at("timesteps").is_null())
      for (const auto& t : s.at("timesteps").array()) m.sampler.timesteps.push_back(t.number());
    for (const auto& t : s.at("sigmas").array()) m.sampler.sigmas.push_back(t.number());
    if (s.has("guidance_scale")) m.sampler.guidance_scale = s.at("guidance_scale").number();
    if (static_cast<int>(m.sampler.sigmas.size()) != m.sampler.num_steps + 1)
      throw ManifestError("manifest.sampler: sigmas must have num_steps + 1 entries");
    const Json& ro = j.at("rollout");
    m.chunk_frames = static_cast<int>(ro.at("chunk_frames").integer());
    m.cache_slots = opt_int(ro, "cache_slots", 21);

    for (const auto& g : j.at("graphs").array()) {
      GraphInfo gi;
      gi.name = g.at("name").string();
      gi.kind = g.at("kind").string();
      gi.file = g.at("file").string();
      gi.sha256 = g.at("sha256").string();
      gi.opset = static_cast<int>(g.at("opset").integer());
      gi.precision = g.at("precision").string();
      gi.inputs = specs(g.at("inputs"), "graph '" + gi.name + "'");
      gi.outputs = specs(g.at("outputs"), "graph '" + gi.name + "'");
      if (g.has("bucket")) {
        const Json& b = g.at("bucket");
        gi.frames = opt_int(b, "frames", 0);
        gi.latent_height = opt_int(b, "latent_height", 0);
        gi.latent_width = opt_int(b, "latent_width", 0);
        gi.batch = opt_int(b, "batch", 1);
        gi.cache_slots = opt_int(b, "cache_slots", 0);
        gi.text_len = opt_int(b, "text_len", mi.text_len);
      }
      gi.tokens_per_frame = opt_int(g, "tokens_per_frame", 0);
      if (g.has("external_data"))
        for (const auto& e : g.at("external_data").array())
          gi.external_data.emplace_back(e.at("file").string(), e.at("sha256").string());
      m.graphs.push_back(std::move(gi));
    }
    if (j.has("tensorrt") && !j.at("tensorrt").is_null() && j.at("tensorrt").has("engines"))
      for (const auto& e : j.at("tensorrt").at("engines").array())
        m.engines.push_back({e.at("graph").string(), e.at("file").string(), e.at("sha256").string(),
                             e.at("tensorrt_version").string(), e.at("sm").string()});
  } catch (const ManifestError&) {
    throw;
  } catch (const std::exception& e) {
    throw ManifestError(std::string("manifest ") + path + ": " + e.what());
  }

  // files and shapes
  const ModelInfo& mi = m.model;
  bool any_step = false;
  for (const auto& g : m.graphs) {
    std::string p = m.path(g.file);
    if (!file_exists(p)) throw ManifestError("graph '" + g.name + "': file '" + g.file + "' named by the manifest is missing from " + dir);
    if (verify_hashes && sha256_file(p) != g.sha256)
      throw ManifestError("graph '" + g.name + "': SHA-256 of " + g.file + " does not match the manifest (corrupt or replaced file); re-export");
    for (const auto& [file, sha] : g.external_data) {
      if (!file_exists(m.path(file))) throw ManifestError("graph '" + g.name + "': external data file '" + file + "' is missing");
      if (verify_hashes && sha256_file(m.path(file)) != sha)
        throw ManifestError("graph '" + g.name + "': SHA-256 of external data " + file + " does not match the manifest");
    }
    if (g.kind == "step") {
      any_step = true;
      const int gf = g.frames / mi.patch[0], gh = g.latent_height / mi.patch[1], gw = g.latent_width / mi.patch[2];
      if (gf * gh * gw <= 0 || g.tokens_per_frame != gh * gw)
        throw ManifestError("graph '" + g.name + "': bucket and tokens_per_frame disagree with the patch size");
      const int64_t B = g.batch, L = mi.num_layers, H = mi.num_heads, D = mi.head_dim(), tpf = g.tokens_per_frame;
      expect_shape(g, g.input("latents"), {B, mi.in_channels, g.frames, g.latent_height, g.latent_width});
      expect_shape(g, g.input("timestep"), {B, g.frames});
      expect_shape(g, g.input("cache_k"), {L, B, H, int64_t(g.cache_slots) * tpf, D});
      expect_shape(g, g.input("cache_v"), {L, B, H, int64_t(g.cache_slots) * tpf, D});
      expect_shape(g, g.input("cross_k"), {L, B, H, g.text_len, D});
      expect_shape(g, g.input("rope_cos"), {gf * tpf, D / 2});
      expect_shape(g, g.input("write_index"), {gf * tpf});
      expect_shape(g, g.input("visibility"), {1, 1, gf, g.cache_slots});
      expect_shape(g, g.output("velocity"), {B, mi.out_channels, g.frames, g.latent_height, g.latent_width});
      expect_shape(g, g.output("new_k"), {L, B, H, gf * tpf, D});
    }
  }
  if (!any_step) throw ManifestError("manifest.graphs: no 'step' graph");
  for (const auto& e : m.engines) {
    if (file_exists(m.path(e.file)) && verify_hashes && sha256_file(m.path(e.file)) != e.sha256)
      throw ManifestError("TensorRT engine " + e.file + ": SHA-256 does not match the manifest");
  }
  return m;
}

const GraphInfo* Manifest::find(const std::string& kind, int frames, int height, int width, int batch, int opset) const {
  const GraphInfo* best = nullptr;
  for (const auto& g : graphs) {
    if (g.kind != kind || (opset && g.opset != opset)) continue;
    if (frames > 0 && (g.frames != frames || g.latent_height != height || g.latent_width != width)) continue;
    if (batch > 0 && g.batch != batch) continue;
    if (!best || g.opset > best->opset) best = &g;
  }
  return best;
}

// ---------------------------------------------------------------------------------
// schedule
// ---------------------------------------------------------------------------------
static double shift_sigma(double s, double k) { return k * s / (1.0 + (k - 1.0) * s); }

std::vector<double> few_step_sigmas(const std::vector<double>& timesteps, double shift) {
  std::vector<double> out;
  for (double t : timesteps) out.push_back(shift_sigma(t / 1000.0, shift));
  out.push_back(0.0);
  return out;
}

std::vector<double> flow_sigmas(int num_steps, double shift) {
  const int steps = num_steps + 1;
  const double start = 1.0, end = 0.0, step = (end - start) / (steps - 1);
  const int halfway = steps / 2;  // torch.linspace's CPU kernel: from both ends
  std::vector<double> out(steps);
  for (int i = 0; i < steps; ++i) {
    double s = i < halfway ? start + step * i : end - step * (steps - i - 1);
    out[i] = shift_sigma(s, shift);
  }
  out.front() = 1.0;
  out.back() = 0.0;
  return out;
}

std::vector<double> Host::sigmas() const {
  const SamplerInfo& s = m_.sampler;
  std::vector<double> sig;
  if (s.kind == "fewstep") {
    sig = few_step_sigmas(s.timesteps, s.shift);
  } else if (s.kind == "euler") {
    sig = flow_sigmas(s.num_steps, s.shift);
  } else {
    throw ManifestError("the native host runs the 'fewstep' and 'euler' samplers; the manifest asks for '" + s.kind + "'");
  }
  if (sig.size() != s.sigmas.size()) throw ManifestError("manifest.sampler.sigmas disagree with the schedule the host computes from kind/timesteps/shift");
  for (size_t i = 0; i < sig.size(); ++i)
    if (std::fabs(sig[i] - s.sigmas[i]) > 1e-12)
      throw ManifestError("manifest.sampler.sigmas disagree with the schedule the host computes from kind/timesteps/shift");
  // Run the recorded values: they are the Python runtime's own float64 table (torch's
  // vectorised linspace rounds differently from the scalar formula in the last ulp).
  return s.sigmas;
}

// ---------------------------------------------------------------------------------
// noise
// ---------------------------------------------------------------------------------
uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

uint64_t frame_seed(int64_t seed, int64_t stream, int64_t position) {
  uint64_t h = splitmix64(static_cast<uint64_t>(seed));
  h = splitmix64(h ^ static_cast<uint64_t>(stream));
  return splitmix64(h ^ static_cast<uint64_t>(position));
}

std::vector<float> counter_noise(int64_t seed, int64_t stream, const std::vector<int64_t>& positions, int C, int h, int w) {
  const int64_t n = static_cast<int64_t>(positions.size()), hw = int64_t(h) * w, per = int64_t(C) * hw;
  std::vector<float> out(static_cast<size_t>(per * n));
  const double two_pi = 6.283185307179586;
  for (int64_t f = 0; f < n; ++f) {
    const uint64_t base = frame_seed(seed, stream, positions[f]);
    for (int64_t i = 0; i < per; ++i) {  // element i of the frame's [C, h, w]
      const uint64_t a = splitmix64(base + 2 * static_cast<uint64_t>(i) + 1);
      const uint64_t b = splitmix64(base + 2 * static_cast<uint64_t>(i) + 2);
      const double u1 = static_cast<double>((a >> 11) + 1) * 0x1.0p-53;  // (0, 1]
      const double u2 = static_cast<double>(b >> 11) * 0x1.0p-53;        // [0, 1)
      const double z = std::sqrt(-2.0 * std::log(u1)) * std::cos(two_pi * u2);
      const int64_t c = i / hw, r = i % hw;
      out[static_cast<size_t>((c * n + f) * hw + r)] = static_cast<float>(z);
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------
// RoPE
// ---------------------------------------------------------------------------------
void rope_tables(const std::vector<int64_t>& positions, int gh, int gw, const int split[3], double theta,
                 std::vector<float>& cos_out, std::vector<float>& sin_out) {
  const int64_t nf = static_cast<int64_t>(positions.size()), S = nf * gh * gw;
  int half = 0;
  for (int a = 0; a < 3; ++a) half += split[a] / 2;
  cos_out.assign(static_cast<size_t>(S * half), 0.f);
  sin_out.assign(static_cast<size_t>(S * half), 0.f);
  std::vector<double> inv[3];
  for (int a = 0; a < 3; ++a) {
    const int d = split[a];
    for (int i = 0; i < d / 2; ++i) inv[a].push_back(1.0 / std::pow(theta, static_cast<double>(2 * i) / d));
  }
  for (int64_t f = 0; f < nf; ++f)
    for (int r = 0; r < gh; ++r)
      for (int c = 0; c < gw; ++c) {
        const int64_t tok = (f * gh + r) * gw + c;
        const double pos[3] = {static_cast<double>(positions[f]), static_cast<double>(r), static_cast<double>(c)};
        int col = 0;
        for (int a = 0; a < 3; ++a)
          for (double iv : inv[a]) {
            const double ang = pos[a] * iv;
            cos_out[static_cast<size_t>(tok * half + col)] = static_cast<float>(std::cos(ang));
            sin_out[static_cast<size_t>(tok * half + col)] = static_cast<float>(std::sin(ang));
            ++col;
          }
      }
}

// ---------------------------------------------------------------------------------
// slots
// ---------------------------------------------------------------------------------
SlotCache::SlotCache(int tokens_per_frame, int chunk_frames, int sink_frames, int window_frames, int max_frames)
    : tpf_(tokens_per_frame), chunk_(chunk_frames), sink_(sink_frames), window_(window_frames) {
  if (chunk_frames < 1) throw std::invalid_argument("chunk_frames must be >= 1");
  if (sink_frames < 0) throw std::invalid_argument("sink_frames must be >= 0");
  ring_ = window_frames < 0 ? std::max(max_frames - sink_frames, chunk_frames) : window_frames + chunk_frames;
  slot_pos_.assign(static_cast<size_t>(sink_ + ring_), -1);
}

int64_t SlotCache::slot_of(int64_t p) const {
  if (p < 0) throw std::invalid_argument("frame position must be >= 0");
  if (p < sink_) return p;
  return sink_ + (p - sink_) % ring_;
}

bool SlotCache::visible(int64_t qs, int64_t qe, int64_t k) const {
  if (k < 0 || k >= qe) return false;
  if (k < sink_ || k >= qs) return true;
  return window_ < 0 || k >= qs - window_;
}

ChunkSlots SlotCache::claim(const std::vector<int64_t>& positions) {
  const int64_t n = static_cast<int64_t>(positions.size());
  if (n == 0 || n > chunk_) throw std::invalid_argument("a chunk has 1..chunk_frames frames");
  for (int64_t i = 1; i < n; ++i)
    if (positions[i] != positions[0] + i) throw std::invalid_argument("chunk positions must be consecutive");
  if (window_ < 0 && positions.back() >= sink_ + ring_)
    throw std::invalid_argument("frame position exceeds the unbounded cache's capacity");
  ChunkSlots cs;
  cs.positions = positions;
  for (auto p : positions) {
    int64_t s = slot_of(p);
    cs.slots.push_back(s);
    slot_pos_[static_cast<size_t>(s)] = p;
  }
  const int64_t qs = positions.front(), qe = positions.back() + 1;
  std::vector<uint8_t> row;
  for (auto sp : slot_pos_) row.push_back(visible(qs, qe, sp) ? 1 : 0);
  cs.visibility.assign(static_cast<size_t>(n), row);
  for (auto s : cs.slots)
    for (int t = 0; t < tpf_; ++t) cs.write_index.push_back(s * tpf_ + t);
  return cs;
}

// ---------------------------------------------------------------------------------
// rollout
// ---------------------------------------------------------------------------------
std::vector<Chunk> Host::rollout(Backend& backend, const std::vector<float>& text, const RolloutOptions& opt, NoiseFn noise,
                                 std::function<void(const Chunk&)> on_chunk) const {
  const ModelInfo& mi = m_.model;
  if (mi.i2v) throw std::invalid_argument("the native host runs text-to-video exports (image-to-video conditions are not wired)");
  if (opt.num_frames < 1) throw std::invalid_argument("num_frames (latent frames) must be >= 1");
  const int chunk = opt.chunk_frames > 0 ? opt.chunk_frames : m_.chunk_frames;
  const int64_t row = int64_t(mi.text_len) * mi.text_dim;
  if (text.empty() || text.size() % static_cast<size_t>(row))
    throw std::invalid_argument("text must be [B, " + std::to_string(mi.text_len) + ", " + std::to_string(mi.text_dim) + "] float32");
  const int B = static_cast<int>(text.size() / static_cast<size_t>(row));
  const bool guided = B == 2;
  if (B > 2) throw std::invalid_argument("text has more than 2 rows (1, or 2 for classifier-free guidance)");
  if (guided && opt.guidance_scale == 1.0) throw std::invalid_argument("a 2-row text means classifier-free guidance, but guidance_scale is 1.0");
  const std::vector<double> sig = sigmas();
  const int N = static_cast<int>(sig.size()) - 1;
  const bool fewstep = m_.sampler.kind == "fewstep";
  NoiseFn nz = noise ? noise : NoiseFn(counter_noise);

  // size: the only exported one unless given
  int h = opt.latent_height, w = opt.latent_width;
  if (h == 0 || w == 0) {
    for (const auto& g : m_.graphs)
      if (g.kind == "step") { h = g.latent_height; w = g.latent_width; break; }
  }
  const bool first_given = !opt.first_latent.empty();
  std::vector<std::vector<int64_t>> chunks;
  for (int s = first_given ? 1 : 0; s < opt.num_frames; s += chunk) {
    std::vector<int64_t> c;
    for (int p = s; p < std::min(s + chunk, opt.num_frames); ++p) c.push_back(p);
    chunks.push_back(c);
  }
  auto step_graph = [&](int n) -> const GraphInfo& {
    const GraphInfo* g = m_.find("step", n, h, w, B, opt.opset);
    if (!g)
      throw std::invalid_argument("the export has no step graph for " + std::to_string(n) + " frames of " + std::to_string(h) +
                                  "x" + std::to_string(w) + " latents, batch " + std::to_string(B) + "; re-export with that bucket");
    return *g;
  };
  std::vector<const GraphInfo*> steps;
  if (first_given) steps.push_back(&step_graph(1));
  for (const auto& c : chunks) steps.push_back(&step_graph(static_cast<int>(c.size())));
  const GraphInfo* ctx = m_.find("context", 0, 0, 0, B, opt.opset);
  if (!ctx) throw std::invalid_argument("the export has no context graph for batch " + std::to_string(B));
  const int S = steps.front()->cache_slots, tpf = steps.front()->tokens_per_frame;
  const int C = mi.out_channels, gh = h / mi.patch[1], gw = w / mi.patch[2];
  if (mi.in_channels != C) throw std::invalid_argument("in_channels != out_channels: conditioning channels are not wired");
  SlotCache cache(tpf, chunk, opt.sink_frames, opt.window_frames, opt.num_frames);
  if (cache.num_slots() > S)
    throw std::invalid_argument("the rollout needs " + std::to_string(cache.num_slots()) + " cache slots but the graphs hold " +
                                std::to_string(S) + "; use a smaller window or re-export with more --cache-frames");

  backend.begin(m_, *ctx, steps);
  backend.encode_context(*ctx, text);

  const int64_t hw = int64_t(h) * w;
  // One model call: x [C, n, h, w] float32 at per-frame timestep t (same for every frame).
  auto forward = [&](const std::vector<float>& x, float t, const ChunkSlots& cs, const std::vector<float>& rc,
                     const std::vector<float>& rs) -> std::vector<float> {
    const int n = static_cast<int>(cs.positions.size());
    const GraphInfo& g = step_graph(n);
    StepInputs in;
    in.latents.reserve(x.size() * B);
    for (int b = 0; b < B; ++b) in.latents.insert(in.latents.end(), x.begin(), x.end());
    in.timestep.assign(static_cast<size_t>(B * n), t);
    in.rope_cos = rc;
    in.rope_sin = rs;
    in.write_index = cs.write_index;
    in.visibility.assign(static_cast<size_t>(n) * S, 0);
    for (int i = 0; i < n; ++i)
      for (size_t j = 0; j < cs.visibility[i].size(); ++j) in.visibility[i * S + j] = cs.visibility[i][j];
    std::vector<float> v = backend.step(g, in);
    if (!guided) return v;
    const size_t per = v.size() / 2;
    const float scale = static_cast<float>(opt.guidance_scale);
    std::vector<float> out(per);
    for (size_t i = 0; i < per; ++i) {
      const float d = v[i] - v[per + i];
      const float m = scale * d;
      out[i] = v[per + i] + m;
    }
    return out;
  };

  std::vector<Chunk> result;
  std::vector<float> rc, rs;
  if (first_given) {
    if (opt.first_latent.size() != static_cast<size_t>(C * hw))
      throw std::invalid_argument("first_latent must be [C, 1, h, w]");
    ChunkSlots cs = cache.claim({0});
    rope_tables({0}, gh, gw, mi.rope_split, mi.rope_theta, rc, rs);
    forward(opt.first_latent, 0.0f, cs, rc, rs);
    Chunk c{{0}, opt.first_latent};
    if (on_chunk) on_chunk(c);
    result.push_back(std::move(c));
  }
  for (size_t ci = 0; ci < chunks.size(); ++ci) {
    const auto& pos = chunks[ci];
    ChunkSlots cs = cache.claim(pos);
    rope_tables(pos, gh, gw, mi.rope_split, mi.rope_theta, rc, rs);
    std::vector<float> x = nz(opt.seed, 0, pos, C, h, w);
    if (x.size() != static_cast<size_t>(C * hw) * pos.size()) throw std::runtime_error("noise source returned the wrong size");
    for (int i = 0; i < N; ++i) {
      const float t = static_cast<float>(sig[i] * 1000.0);
      std::vector<float> v = forward(x, t, cs, rc, rs);
      if (fewstep) {
        const float si = static_cast<float>(sig[i]);
        std::vector<float> x0(x.size());
        for (size_t k = 0; k < x.size(); ++k) {
          const float sv = si * v[k];
          x0[k] = x[k] - sv;
        }
        if (i + 1 < N) {
          std::vector<float> eps = nz(opt.seed, 1 + i, pos, C, h, w);
          if (eps.size() != x.size()) throw std::runtime_error("noise source returned the wrong size");
          const float s1 = static_cast<float>(sig[i + 1]);
          const float a = 1.0f - s1;
          for (size_t k = 0; k < x.size(); ++k) {
            const float p = a * x0[k];
            const float q = s1 * eps[k];
            x[k] = p + q;
          }
        } else {
          x = std::move(x0);
        }
      } else {  // euler
        const float dt = static_cast<float>(sig[i + 1] - sig[i]);
        for (size_t k = 0; k < x.size(); ++k) {
          const float d = dt * v[k];
          x[k] = x[k] + d;
        }
      }
    }
    if (ci + 1 < chunks.size()) forward(x, 0.0f, cs, rc, rs);  // refresh the cache with the clean chunk
    Chunk c{pos, x};
    if (on_chunk) on_chunk(c);
    result.push_back(std::move(c));
  }
  return result;
}

}  // namespace we
