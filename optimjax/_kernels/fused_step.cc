// One pass over memory per parameter: optimjax.fused's CPU kernel, called through XLA's FFI.
//
// For every element of every leaf it reads p, g and the state once and writes p and the state once (28 bytes
// per fp32 parameter for the Adam family and Rprop, 20 for SGD with momentum, RMSprop, Adagrad and ASGD), where
// XLA:CPU makes a
// loop per output array. The arithmetic is the one written in the docstrings of optimjax's transforms (that is,
// torch.optim's single-tensor path), operation by operation and in the same order, each operation rounded once
// (compiled without contraction into FMA and without fast-math):
//
//   g <- sign * g                                    (sign = -1 for torch's maximize, else 1: exact)
//   g <- g + wd * p                                  (coupled L2 decay: adam, nadam, sgd, rmsprop, adagrad)
//   adam, nadam:  m <- m + w1 * (g - m)              (w1 = 1 - b1 < 0.5; else torch.lerp's g - (g - m) * (1 - w1))
//                 v <- v * b2 + ((1 - b2) * g) * g
//                 d <- (a * m) / (sqrt(v) / b + eps)          (adam: a = 1 / (1 - b1^t), b = sqrt(1 - b2^t))
//                 d <- (a * g + b * m) / (sqrt(v / c) + eps)  (nadam: its two coefficients, c = 1 - b2^t)
//   momentum:     u <- u * beta + g   (or + (1 - dampening) * g);   d <- u, or g + beta * u (Nesterov)
//   rmsprop:      v <- v * decay + ((1 - decay) * g) * g;   d <- g / (sqrt(v) + eps)
//   adagrad:      s <- s + g * g;                           d <- g / (sqrt(s) + eps)
//   radam:        m, v as adam;  m' <- m / bc1;  d <- (m' * (bc2_sqrt / (sqrt(v) + eps))) * r  if rectified, else m'
//   adamax:       m as adam;  u <- max(u * b2, |g| + eps) (NaN if either is);  d <- (m / u) * (1 / (1 - b1^t))
//   d <- d + wd * p                                  (decoupled decay: adamw, nadamw, radam)
//   p <- p + neg_lr * d
//
// Rprop and ASGD keep their learning rate inside the direction (no learning-rate step ends their chain): the
// family computes the update u itself and the kernel writes p <- p + u, as optax.apply_updates does.
//   rprop:        q <- g * prev;  s <- min(max(s * (eta+ if q > 0, eta- if q < 0, else 1), s_min), s_max);
//                 g <- 0 where q < 0;  u <- -sign(g) * s;  prev <- g
//   asgd:         u <- (p * (1 - lambd * eta) - eta * g) - p;  p' <- p + u;  ax <- p' if mu = 1, else ax + (p' - ax) * mu
//
// The per-step scalars are computed once in JAX and passed as a small buffer; the family and which terms exist
// are attributes, resolved into one specialized loop at compile time so that it vectorizes. Work is split into
// chunks claimed from an atomic counter by the calling thread and by helpers scheduled on XLA's intra-op thread
// pool, so every core streams memory; one call updates every leaf of the tree.

#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <memory>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

enum Family : int { kAdam, kNadam, kMomentum, kRms, kAdagrad, kRadam, kAdamax, kRprop, kAsgd, kNumFamilies };
// The families whose update u is added to p as it is (their learning rate is inside it).
constexpr bool WritesUpdate(int family) { return family == kRprop || family == kAsgd; }
// The families with two state arrays.
constexpr bool HasTwoStates(int family) {
  return family == kAdam || family == kNadam || family == kRadam || family == kAdamax || family == kRprop;
}
constexpr int kNumFlagSets = 16;  // four flags: two of the family's, coupled decay, decoupled decay
// Coefficients: eight of the family's (below), then the weight decay, -learning_rate and the gradient's sign.
//   adam, nadam: w1, b2, 1 - b2, a, b, c, eps;  momentum: beta, 1 - dampening;  rmsprop, adagrad: decay, 1 - decay, eps
//   radam: w1, b2, 1 - b2, bc1, bc2_sqrt, eps, r, rectified (1 or 0);  adamax: w1, b2, eps, 1 / (1 - b1^t)
//   rprop: eta+, eta-, s_min, s_max;  asgd: 1 - lambd * eta, eta, mu, mu == 1 (1 or 0)
constexpr int kNumCoefs = 11, kWd = 8, kNegLr = 9, kGradSign = 10;

template <typename T>
struct Leaf {
  T* p;
  const T* g;
  T* s0;  // m, the momentum buffer, v, the sum of squares, Rprop's prev or ASGD's ax
  T* s1;  // v or u (Adam family, RAdam, Adamax), Rprop's step sizes, else unused
};

// The larger of a and b, NaN if either is (jnp.maximum, torch.maximum); the smaller, likewise.
template <typename T>
inline T MaxNan(T a, T b) {
  return a != a ? a : (b != b ? b : (a > b ? a : b));
}
template <typename T>
inline T MinNan(T a, T b) {
  return a != a ? a : (b != b ? b : (a < b ? a : b));
}

// kFlag0 / kFlag1: Adam family, RAdam, Adamax: torch.lerp's second form, unused (RAdam: rectified); momentum:
// Nesterov, dampening; Rprop: -, step_min and step_max are numbers; ASGD: -, mu == 1. The flags 1 of RAdam, Rprop
// and ASGD are read off the step's coefficients (WithCoefficientFlag), so that an element computes only the form
// of the update this step uses.
template <typename T, int kFamily, bool kFlag0, bool kFlag1, bool kCoupled, bool kDecoupled>
void UpdateRange(const Leaf<T>& leaf, int64_t begin, int64_t end, const T* c) {
  const T wd = c[kWd], neg_lr = c[kNegLr], sign = c[kGradSign];
  T* __restrict p = leaf.p;
  const T* __restrict gp = leaf.g;
  T* __restrict s0 = leaf.s0;
  T* __restrict s1 = leaf.s1;
  for (int64_t i = begin; i < end; ++i) {
    const T theta = p[i];
    T g = sign * gp[i];
    if (kCoupled) g = g + wd * theta;
    T d;
    if constexpr (kFamily == kAdam || kFamily == kNadam) {
      const T w1 = c[0], b2 = c[1], one_minus_b2 = c[2], a = c[3], b = c[4], cc = c[5], eps = c[6];
      T m = s0[i];
      m = kFlag0 ? g - (g - m) * (T(1) - w1) : m + w1 * (g - m);
      const T v = s1[i] * b2 + (one_minus_b2 * g) * g;
      if constexpr (kFamily == kNadam) {
        d = (a * g + b * m) / (std::sqrt(v / cc) + eps);
      } else {
        d = (a * m) / (std::sqrt(v) / b + eps);
      }
      s0[i] = m;
      s1[i] = v;
    } else if constexpr (kFamily == kMomentum) {
      const T beta = c[0], one_minus_dampening = c[1];
      const T u = s0[i] * beta + (kFlag1 ? one_minus_dampening * g : g);
      d = kFlag0 ? g + beta * u : u;
      s0[i] = u;
    } else if constexpr (kFamily == kRms) {
      const T decay = c[0], one_minus_decay = c[1], eps = c[2];
      const T v = s0[i] * decay + (one_minus_decay * g) * g;
      d = g / (std::sqrt(v) + eps);
      s0[i] = v;
    } else if constexpr (kFamily == kAdagrad) {
      const T eps = c[2];
      const T s = s0[i] + g * g;
      d = g / (std::sqrt(s) + eps);
      s0[i] = s;
    } else if constexpr (kFamily == kRadam) {
      const T w1 = c[0], b2 = c[1], one_minus_b2 = c[2], bc1 = c[3], bc2_sqrt = c[4], eps = c[5], r = c[6];
      T m = s0[i];
      m = kFlag0 ? g - (g - m) * (T(1) - w1) : m + w1 * (g - m);
      const T v = s1[i] * b2 + (one_minus_b2 * g) * g;
      const T m_hat = m / bc1;
      if constexpr (kFlag1) {  // rectified
        d = (m_hat * (bc2_sqrt / (std::sqrt(v) + eps))) * r;
      } else {
        d = m_hat;
      }
      s0[i] = m;
      s1[i] = v;
    } else if constexpr (kFamily == kAdamax) {
      const T w1 = c[0], b2 = c[1], eps = c[2], inv_bc1 = c[3];
      T m = s0[i];
      m = kFlag0 ? g - (g - m) * (T(1) - w1) : m + w1 * (g - m);
      const T u = MaxNan(s1[i] * b2, std::abs(g) + eps);
      d = (m / u) * inv_bc1;
      s0[i] = m;
      s1[i] = u;
    } else if constexpr (kFamily == kRprop) {
      const T eta_plus = c[0], eta_minus = c[1], step_min = c[2], step_max = c[3];
      const T q = g * s0[i];
      const T factor = q > T(0) ? eta_plus : (q < T(0) ? eta_minus : T(1));
      T s;
      if constexpr (kFlag1) {  // step_min, step_max are numbers: compare-and-select keeps a NaN s as MaxNan would
        const T scaled = s1[i] * factor;
        const T low = step_min > scaled ? step_min : scaled;
        s = step_max < low ? step_max : low;
      } else {
        s = MinNan(MaxNan(step_min, s1[i] * factor), step_max);
      }
      const T kept = q < T(0) ? T(0) : g;
      const T sign = kept > T(0) ? T(1) : (kept < T(0) ? T(-1) : kept);  // XLA's sign: +-0 and NaN as they are
      d = -sign * s;
      s0[i] = kept;
      s1[i] = s;
    } else {  // kAsgd
      const T shrink = c[0], eta = c[1], mu = c[2];
      d = (theta * shrink - eta * g) - theta;
      const T next = theta + d;
      const T ax = s0[i];
      s0[i] = kFlag1 ? next : ax + (next - ax) * mu;
    }
    if (kDecoupled) d = d + wd * theta;
    if constexpr (WritesUpdate(kFamily)) {
      p[i] = theta + d;
    } else {
      p[i] = theta + neg_lr * d;
    }
  }
}

template <typename T>
using RangeFn = void (*)(const Leaf<T>&, int64_t, int64_t, const T*);

template <typename T, size_t... kIndex>
constexpr std::array<RangeFn<T>, sizeof...(kIndex)> MakeTable(std::index_sequence<kIndex...>) {
  return {&UpdateRange<T, int(kIndex / kNumFlagSets), bool(kIndex & 8), bool(kIndex & 4), bool(kIndex & 2),
                       bool(kIndex & 1)>...};
}

// Flag 1 of RAdam (rectified this step), Rprop (both step bounds numbers, not NaN) and ASGD (mu == 1 this step),
// from the coefficients; the other families' flags as given.
template <typename T>
int64_t WithCoefficientFlag(int64_t family, int64_t flags, const T* c) {
  bool flag1;
  switch (family) {
    case kRadam: flag1 = c[7] != T(0); break;
    case kRprop: flag1 = c[2] == c[2] && c[3] == c[3]; break;
    case kAsgd: flag1 = c[3] != T(0); break;
    default: return flags;
  }
  return (flags & ~int64_t{4}) | (flag1 ? 4 : 0);
}

template <typename T>
RangeFn<T> Select(int64_t family, int64_t flags) {
  static constexpr auto table = MakeTable<T>(std::make_index_sequence<kNumFamilies * kNumFlagSets>());
  return table[family * kNumFlagSets + flags];
}

struct Chunk {
  int64_t leaf, begin, end;
};

// Elements per chunk: 64K fp32 elements are 256 KiB per array, small enough to balance the threads over a few
// large leaves, large enough that claiming a chunk costs nothing next to streaming it.
constexpr int64_t kChunk = int64_t{1} << 16;

template <typename T>
struct Work {
  std::vector<Leaf<T>> leaves;
  std::vector<Chunk> chunks;
  std::array<T, kNumCoefs> coefs;
  RangeFn<T> fn;
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};

  void Run() {
    for (int64_t i; (i = next.fetch_add(1, std::memory_order_relaxed)) < int64_t(chunks.size());) {
      const Chunk& c = chunks[i];
      fn(leaves[c.leaf], c.begin, c.end, coefs.data());
      done.fetch_add(1, std::memory_order_release);
    }
  }
};

template <typename T>
ffi::Error Step(ffi::ThreadPool& pool, ffi::AnyBuffer coefs, ffi::RemainingArgs args, ffi::RemainingRets rets,
                int64_t family, int64_t flags, int64_t flat_offset) {
  const size_t states = HasTwoStates(int(family)) ? 2 : 1;
  auto work = std::make_shared<Work<T>>();
  std::copy_n(coefs.typed_data<T>(), kNumCoefs, work->coefs.begin());
  work->fn = Select<T>(family, WithCoefficientFlag(family, flags, work->coefs.data()));
  auto add_chunks = [&](int64_t leaf, int64_t size) {
    for (int64_t begin = 0; begin < size; begin += kChunk) {
      work->chunks.push_back({leaf, begin, std::min(size, begin + kChunk)});
    }
  };
  auto buffer = [&](auto&& decoded, T** out) -> bool {  // the data of a decoded argument or result
    if (!decoded.has_value()) return false;
    if constexpr (std::is_same_v<std::decay_t<decltype(*decoded)>, ffi::AnyBuffer>) {
      *out = reinterpret_cast<T*>(decoded->untyped_data());
    } else {
      *out = reinterpret_cast<T*>((*decoded)->untyped_data());
    }
    return true;
  };
  if (flat_offset < 0) {
    // Per-leaf state: (p, g, *state) per leaf in, (p, *state) per leaf out; outputs alias the inputs p and state
    // (input_output_aliases), so XLA copies first only if one of them is not donated.
    const size_t in = 2 + states, out = 1 + states, n = args.size() / in;
    if (args.size() != n * in || rets.size() != n * out) {
      return ffi::Error::InvalidArgument("optimjax fused step: expected (p, g, *state) per leaf");
    }
    for (size_t i = 0; i < n; ++i) {
      T* data[4] = {};
      for (size_t k = 0; k < out; ++k) {
        if (!buffer(rets.get<ffi::AnyBuffer>(out * i + k), &data[k])) return ffi::Error::InvalidArgument("bad result");
      }
      auto g = args.get<ffi::AnyBuffer>(in * i + 1);
      if (!buffer(g, &data[3])) return ffi::Error::InvalidArgument("optimjax fused step: bad argument");
      work->leaves.push_back({data[0], data[3], data[1], data[2]});
      add_chunks(i, g->element_count());
    }
  } else {
    // Flat state (one vector per state array for all leaves, optax.flatten's layout): (*state) then (p, g) per
    // leaf in, (*state) then p per leaf out; this call's leaves start at element `flat_offset` of the state.
    const size_t n = (args.size() - states) / 2;
    if (args.size() != states + 2 * n || rets.size() != states + n) {
      return ffi::Error::InvalidArgument("optimjax fused step: expected (*flat state, (p, g) per leaf)");
    }
    T* state[2] = {};
    int64_t state_size = 0;
    for (size_t k = 0; k < states; ++k) {
      auto result = rets.get<ffi::AnyBuffer>(k);
      if (!buffer(result, &state[k])) return ffi::Error::InvalidArgument("optimjax fused step: bad result");
      state_size = (*result)->element_count();
    }
    int64_t offset = flat_offset;
    for (size_t i = 0; i < n; ++i) {
      T *p = nullptr, *g = nullptr;
      auto g_arg = args.get<ffi::AnyBuffer>(states + 2 * i + 1);
      if (!buffer(rets.get<ffi::AnyBuffer>(states + i), &p) || !buffer(g_arg, &g)) {
        return ffi::Error::InvalidArgument("optimjax fused step: bad argument");
      }
      const int64_t size = g_arg->element_count();
      if (offset + size > state_size) return ffi::Error::InvalidArgument("optimjax fused step: state too small");
      work->leaves.push_back({p, g, state[0] + offset, states > 1 ? state[1] + offset : nullptr});
      add_chunks(i, size);
      offset += size;
    }
  }
  const int64_t total = work->chunks.size();
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), total) - 1;
  for (int64_t h = 0; h < helpers; ++h) {
    pool.Schedule([work] { work->Run(); });
  }
  work->Run();  // the calling thread takes chunks too, so a busy pool never stalls the step
  while (work->done.load(std::memory_order_acquire) < total) {
    std::this_thread::yield();  // at most one chunk per helper is still being written
  }
  return ffi::Error::Success();
}

ffi::Error Dispatch(ffi::ThreadPool pool, ffi::AnyBuffer coefs, ffi::RemainingArgs args, ffi::RemainingRets rets,
                    int64_t family, int64_t flags, int64_t flat_offset) {
  if (family < 0 || family >= kNumFamilies || flags < 0 || flags >= kNumFlagSets) {
    return ffi::Error::InvalidArgument("optimjax fused step: unknown family or flags");
  }
  if (coefs.element_count() != kNumCoefs) {
    return ffi::Error::InvalidArgument("optimjax fused step: wrong number of coefficients");
  }
  switch (coefs.element_type()) {
    case ffi::DataType::F32:
      return Step<float>(pool, coefs, args, rets, family, flags, flat_offset);
    case ffi::DataType::F64:
      return Step<double>(pool, coefs, args, rets, family, flags, flat_offset);
    default:
      return ffi::Error::InvalidArgument("optimjax fused step: float32 or float64 only");
  }
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(OptimjaxFusedStep, Dispatch,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()
                                  .RemainingArgs()
                                  .RemainingRets()
                                  .Attr<int64_t>("family")
                                  .Attr<int64_t>("flags")
                                  .Attr<int64_t>("flat_offset"));
