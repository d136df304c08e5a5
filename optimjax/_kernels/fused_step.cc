// One pass over memory per parameter for the Adam family: optimjax.fused's CPU kernel.
//
// For every element of every leaf it reads p, g, m, v once and writes p, m, v once (28 bytes per fp32
// parameter), where XLA:CPU makes three loops of the same arithmetic (40 bytes). The arithmetic is the one of
// optimjax's GradientTransformations (and so of torch.optim's single-tensor path), operation by operation and
// in the same order, compiled without floating-point contraction or fast-math, so that a fused step gives the
// same numbers as `optimizer.update` followed by `optax.apply_updates`:
//
//   g <- g + coupled_wd * p                          (adam, nadam with weight_decay: L2 added to the gradient)
//   m <- m + w1 * (g - m)          (w1 = 1 - b1 < 0.5; torch.lerp's other form  g - (g - m) * (1 - w1) else)
//   v <- v * b2 + ((1 - b2) * g) * g
//   d <- (a * m) / (sqrt(v) / b + eps)              (adam: a = 1 / (1 - b1^t), b = sqrt(1 - b2^t))
//   d <- (a * g + b * m) / (sqrt(v / c) + eps)      (nadam: a, b its two coefficients, c = 1 - b2^t)
//   d <- d + decoupled_wd * p                        (adamw, nadamw)
//   p <- p + neg_lr * d
//
// The per-step scalars are computed once in JAX and passed as a small buffer; which terms exist is fixed per
// optimizer and passed as attributes. Work is split into chunks claimed from an atomic counter by the calling
// thread and by helpers scheduled on XLA's intra-op thread pool, so both cores stream memory.

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <memory>
#include <thread>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

enum Coef { kW1, kB2, kOneMinusB2, kA, kB, kC, kEps, kCoupledWd, kDecoupledWd, kNegLr, kNumCoefs };

struct Flags {
  bool nadam, lerp_near_end, coupled, decoupled;
};

template <typename T>
struct Leaf {
  T* p;
  const T* g;
  T* m;
  T* v;
};

template <typename T, bool kNadam, bool kNearEnd, bool kCoupled, bool kDecoupled>
void UpdateRange(const Leaf<T>& leaf, int64_t begin, int64_t end, const T* c) {
  const T w1 = c[kW1], b2 = c[kB2], one_minus_b2 = c[kOneMinusB2], a = c[kA], b = c[kB], cc = c[kC],
          eps = c[kEps], coupled_wd = c[kCoupledWd], decoupled_wd = c[kDecoupledWd], neg_lr = c[kNegLr];
  const T one_minus_w1 = T(1) - w1;
  T* __restrict p = leaf.p;
  const T* __restrict gp = leaf.g;
  T* __restrict mp = leaf.m;
  T* __restrict vp = leaf.v;
  for (int64_t i = begin; i < end; ++i) {
    const T theta = p[i];
    T g = gp[i];
    if (kCoupled) g = g + coupled_wd * theta;
    T m = mp[i];
    m = kNearEnd ? g - (g - m) * one_minus_w1 : m + w1 * (g - m);
    const T v = vp[i] * b2 + (one_minus_b2 * g) * g;
    T d = kNadam ? (a * g + b * m) / (std::sqrt(v / cc) + eps) : (a * m) / (std::sqrt(v) / b + eps);
    if (kDecoupled) d = d + decoupled_wd * theta;
    p[i] = theta + neg_lr * d;
    mp[i] = m;
    vp[i] = v;
  }
}

template <typename T>
using RangeFn = void (*)(const Leaf<T>&, int64_t, int64_t, const T*);

template <typename T, bool... kFlags>
RangeFn<T> Pick() {
  return &UpdateRange<T, kFlags...>;
}

// The specialization for these flags: the branches are resolved at compile time, so the loop vectorizes.
template <typename T>
RangeFn<T> Select(const Flags& f) {
  const int index = f.nadam * 8 + f.lerp_near_end * 4 + f.coupled * 2 + f.decoupled;
  static const RangeFn<T> table[16] = {
      Pick<T, 0, 0, 0, 0>(), Pick<T, 0, 0, 0, 1>(), Pick<T, 0, 0, 1, 0>(), Pick<T, 0, 0, 1, 1>(),
      Pick<T, 0, 1, 0, 0>(), Pick<T, 0, 1, 0, 1>(), Pick<T, 0, 1, 1, 0>(), Pick<T, 0, 1, 1, 1>(),
      Pick<T, 1, 0, 0, 0>(), Pick<T, 1, 0, 0, 1>(), Pick<T, 1, 0, 1, 0>(), Pick<T, 1, 0, 1, 1>(),
      Pick<T, 1, 1, 0, 0>(), Pick<T, 1, 1, 0, 1>(), Pick<T, 1, 1, 1, 0>(), Pick<T, 1, 1, 1, 1>(),
  };
  return table[index];
}

struct Chunk {
  int64_t leaf, begin, end;
};

// Elements per chunk: 64K fp32 elements are 256 KiB per array, small enough to balance two threads over a few
// large leaves, large enough that claiming a chunk costs nothing next to streaming it.
constexpr int64_t kChunk = int64_t{1} << 16;

template <typename T>
struct Work {
  std::vector<Leaf<T>> leaves;
  std::vector<Chunk> chunks;
  std::vector<T> coefs;
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
                const Flags& flags) {
  if (coefs.element_count() != kNumCoefs) {
    return ffi::Error::InvalidArgument("optimjax fused step: wrong number of coefficients");
  }
  auto work = std::make_shared<Work<T>>();
  work->coefs.assign(coefs.typed_data<T>(), coefs.typed_data<T>() + kNumCoefs);
  work->fn = Select<T>(flags);
  const size_t n = args.size() / 4;
  work->leaves.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    auto p = args.get<ffi::AnyBuffer>(4 * i);
    auto g = args.get<ffi::AnyBuffer>(4 * i + 1);
    auto m = args.get<ffi::AnyBuffer>(4 * i + 2);
    auto v = args.get<ffi::AnyBuffer>(4 * i + 3);
    auto p_out = rets.get<ffi::AnyBuffer>(3 * i);
    auto m_out = rets.get<ffi::AnyBuffer>(3 * i + 1);
    auto v_out = rets.get<ffi::AnyBuffer>(3 * i + 2);
    if (!p.has_value() || !g.has_value() || !m.has_value() || !v.has_value() || !p_out.has_value() ||
        !m_out.has_value() || !v_out.has_value()) {
      return ffi::Error::InvalidArgument("optimjax fused step: expected (p, g, m, v) per leaf");
    }
    // The outputs alias the inputs (input_output_aliases); XLA copies first when an input is not donated.
    T* pd = (*p_out)->typed_data<T>();
    T* md = (*m_out)->typed_data<T>();
    T* vd = (*v_out)->typed_data<T>();
    const int64_t size = p->element_count();
    work->leaves.push_back({pd, g->typed_data<T>(), md, vd});
    for (int64_t begin = 0; begin < size; begin += kChunk) {
      work->chunks.push_back({int64_t(i), begin, std::min(size, begin + kChunk)});
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
                    int64_t nadam, int64_t lerp_near_end, int64_t coupled, int64_t decoupled) {
  const Flags flags{nadam != 0, lerp_near_end != 0, coupled != 0, decoupled != 0};
  if (args.size() % 4 != 0 || rets.size() != args.size() / 4 * 3) {
    return ffi::Error::InvalidArgument("optimjax fused step: expected (p, g, m, v) per leaf");
  }
  switch (coefs.element_type()) {
    case ffi::DataType::F32:
      return Step<float>(pool, coefs, args, rets, flags);
    case ffi::DataType::F64:
      return Step<double>(pool, coefs, args, rets, flags);
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
                                  .Attr<int64_t>("nadam")
                                  .Attr<int64_t>("lerp_near_end")
                                  .Attr<int64_t>("coupled")
                                  .Attr<int64_t>("decoupled"));
