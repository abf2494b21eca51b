// Row parts on the calling thread and XLA's intra-op pool, for every kernel in this folder.
//
// Parts are claimed from an atomic counter by the caller and by up to pool.num_threads() - 1 pool tasks, so the
// caller never waits for a part nobody has started: two calls running at once on a small pool cannot deadlock, and
// a task that starts after the call has returned finds no part left and only drops its reference to the shared
// state. Each part covers a fixed row range, so a kernel that writes per-part partial sums and merges them in part
// order gets results that do not depend on thread timing.
#pragma once

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>

#include "xla/ffi/api/ffi.h"

namespace effnet {

struct RowParts {
  std::function<void(int64_t, int64_t, int64_t)> body;
  int64_t rows, parts;
  std::atomic<int64_t> next{0}, done{0};
  std::mutex mu;
  std::condition_variable cv;

  void Run() {
    for (int64_t p; (p = next.fetch_add(1)) < parts;) {
      body(p, rows * p / parts, rows * (p + 1) / parts);
      if (done.fetch_add(1) + 1 == parts) {
        std::lock_guard<std::mutex> lock(mu);
        cv.notify_all();
      }
    }
  }
};

// Runs body(part, r0, r1) for part 0 .. parts-1, [r0, r1) its share of `rows`; returns when all are done.
inline void ParallelRows(xla::ffi::ThreadPool& pool, int64_t rows, int64_t parts,
                         std::function<void(int64_t, int64_t, int64_t)> body) {
  auto work = std::make_shared<RowParts>();
  work->body = std::move(body);
  work->rows = rows;
  work->parts = parts;
  const int64_t helpers = std::min<int64_t>(parts, std::max<int64_t>(1, pool.num_threads())) - 1;
  for (int64_t t = 0; t < helpers; ++t) pool.Schedule([work] { work->Run(); });
  work->Run();
  std::unique_lock<std::mutex> lock(work->mu);
  work->cv.wait(lock, [&] { return work->done.load() == work->parts; });
}

}  // namespace effnet
