#include "broker/store/storage_writer.h"

#include <chrono>

#include "common/log.h"

namespace fmq {

StorageWriter::StorageWriter(storage::KvStore* kv, WriterOptions opts, std::function<void()> notify,
                             std::shared_ptr<StorageHealth> health)
    : kv_(kv),
      opts_(opts),
      notify_(std::move(notify)),
      health_(health != nullptr ? std::move(health) : std::make_shared<StorageHealth>()),
      thread_([this] { Loop(); }) {}

StorageWriter::~StorageWriter() {
  {
    std::lock_guard<std::mutex> l(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
  if (failing_) health_->failing_.fetch_sub(1, std::memory_order_relaxed);
}

void StorageWriter::Submit(storage::WriteBatch batch, Done done) {
  {
    std::lock_guard<std::mutex> l(mu_);
    pending_.push_back({std::move(batch), std::move(done)});
  }
  cv_.notify_one();
}

void StorageWriter::RunCompletions() {
  std::vector<std::pair<Done, bool>> ready;
  {
    std::lock_guard<std::mutex> l(mu_);
    ready.swap(completions_);
  }
  for (auto& [done, ok] : ready) done(ok);
}

void StorageWriter::Drain() {
  std::unique_lock<std::mutex> l(mu_);
  drained_cv_.wait(l, [&] { return pending_.empty() && !busy_; });
}

void StorageWriter::Loop() {
  using Clock = std::chrono::steady_clock;
  storage::WriteBatch failed;  // kept for retry, always written first
  std::unique_lock<std::mutex> l(mu_);
  while (true) {
    cv_.wait(l, [&] { return stop_ || !pending_.empty() || !failed.empty(); });
    if (stop_ && pending_.empty() && failed.empty()) break;
    if (!failed.empty() && !stop_) {
      // Back off before retrying a failed write.
      cv_.wait_for(l, std::chrono::milliseconds(opts_.retry_interval_ms), [&] { return stop_; });
    } else if (opts_.mode == SyncMode::kBatched && !stop_) {
      // Gather for up to sync_interval_ms: one fsync for all of it.
      auto until = Clock::now() + std::chrono::milliseconds(opts_.sync_interval_ms);
      cv_.wait_until(l, until, [&] { return stop_; });
    }
    std::deque<Item> items;
    items.swap(pending_);
    busy_ = true;
    l.unlock();

    storage::WriteBatch merged;
    merged.Append(std::move(failed));
    for (Item& it : items) merged.Append(std::move(it.batch));
    const size_t bytes = merged.bytes();
    absl::Status s = merged.empty() ? absl::OkStatus() : kv_->Write(merged, opts_.mode != SyncMode::kNone);
    const bool ok = s.ok();
    if (ok) {
      if (failing_) {
        failing_ = false;
        health_->failing_.fetch_sub(1, std::memory_order_relaxed);
        FMQ_LOG_WARN("storage: writes succeed again");
      }
      stats_.writes++;
      stats_.batches += items.size();
      stats_.bytes += bytes;
    } else {
      stats_.errors++;
      const bool first = !failing_;
      if (first) {
        failing_ = true;
        health_->failing_.fetch_add(1, std::memory_order_relaxed);
      }
      if (first || stats_.errors % 100 == 0) {
        FMQ_LOG_ERROR("storage: write of %zu bytes failed (%s); retrying every %u ms", bytes,
                      std::string(s.message()).c_str(), opts_.retry_interval_ms);
      }
      if (bytes > opts_.max_retry_bytes || stop_) {
        stats_.dropped_bytes += bytes;
        FMQ_LOG_ERROR("storage: dropped %zu bytes of unwritable changes", bytes);
      } else {
        failed = std::move(merged);
      }
    }
    l.lock();
    busy_ = false;
    for (Item& it : items) {
      if (it.done) completions_.emplace_back(std::move(it.done), ok);
    }
    if (!items.empty() && notify_) notify_();
    if (pending_.empty()) drained_cv_.notify_all();
  }
  busy_ = false;
  drained_cv_.notify_all();
}

}  // namespace fmq
