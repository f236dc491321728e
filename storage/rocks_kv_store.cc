// RocksDB implementation of KvStore: one column family per Family.
#include <rocksdb/cache.h>
#include <rocksdb/db.h>
#include <rocksdb/filter_policy.h>
#include <rocksdb/table.h>
#include <rocksdb/write_batch.h>
#include <sys/stat.h>
#include <sys/statvfs.h>

#include <atomic>
#include <cerrno>
#include <cstdarg>
#include <cstdio>
#include <cstring>

#include "common/log.h"
#include "storage/kv_store.h"

namespace fmq::storage {
namespace {

// RocksDB's info log goes to fleetmq's log (warnings and errors only), not
// to a LOG file in the data dir: one log stream for operators, and no file
// write that can fail on a full disk and leave RocksDB's writer in an error
// state (Debian's build asserts on closing such a writer).
class RocksLogger final : public rocksdb::Logger {
 public:
  RocksLogger() : rocksdb::Logger(rocksdb::InfoLogLevel::WARN_LEVEL) {}
  using rocksdb::Logger::Logv;
  void Logv(const char* format, va_list ap) override { Logv(rocksdb::InfoLogLevel::INFO_LEVEL, format, ap); }
  void Logv(const rocksdb::InfoLogLevel level, const char* format, va_list ap) override {
    if (level < GetInfoLogLevel()) return;
    char buf[512];
    std::vsnprintf(buf, sizeof buf, format, ap);
    if (level >= rocksdb::InfoLogLevel::ERROR_LEVEL) {
      FMQ_LOG_ERROR("rocksdb: %s", buf);
    } else {
      FMQ_LOG_WARN("rocksdb: %s", buf);
    }
  }
};

absl::Status FromRocks(const rocksdb::Status& s, std::string_view what) {
  if (s.ok()) return absl::OkStatus();
  std::string msg = std::string(what) + ": " + s.ToString();
  if (s.IsNotFound()) return absl::NotFoundError(msg);
  if (s.IsCorruption()) return absl::DataLossError(msg);
  if (s.IsIOError() || s.IsNoSpace()) return absl::UnavailableError(msg);
  return absl::InternalError(msg);
}

class RocksKvStore final : public KvStore {
 public:
  RocksKvStore(std::unique_ptr<rocksdb::DB> db, std::vector<rocksdb::ColumnFamilyHandle*> cfs, std::string dir,
               uint64_t min_free_bytes)
      : db_(std::move(db)), cfs_(std::move(cfs)), dir_(std::move(dir)), min_free_(min_free_bytes) {}
  ~RocksKvStore() override {
    for (auto* h : cfs_) db_->DestroyColumnFamilyHandle(h);
    db_->Close();
  }

  absl::Status Write(const WriteBatch& batch, bool sync) override {
    if (min_free_ > 0) {
      struct statvfs fs;
      if (statvfs(dir_.c_str(), &fs) == 0) {
        const uint64_t free_bytes = uint64_t{fs.f_bavail} * fs.f_frsize;
        if (free_bytes < min_free_ + batch.bytes()) {
          return absl::UnavailableError("disk almost full: " + std::to_string(free_bytes) + " bytes free in " + dir_ +
                                        ", storage.min_free_bytes is " + std::to_string(min_free_));
        }
      }
    }
    if (needs_resume_) {
      // After a failed write (e.g. ENOSPC) RocksDB refuses writes until it
      // is resumed; try that first, each time we are asked to write.
      rocksdb::Status r = db_->Resume();
      if (!r.ok()) return FromRocks(r, "resume after write error");
      needs_resume_ = false;
    }
    rocksdb::WriteBatch wb;
    for (const auto& op : batch.ops()) {
      auto* cf = cfs_[static_cast<size_t>(op.family)];
      rocksdb::Status s = op.del ? wb.Delete(cf, op.key) : wb.Put(cf, op.key, op.value);
      if (!s.ok()) return FromRocks(s, "batch");
    }
    rocksdb::WriteOptions wo;
    wo.sync = sync;
    rocksdb::Status s = db_->Write(wo, &wb);
    if (!s.ok()) {
      needs_resume_ = true;
      return FromRocks(s, "write");
    }
    batch.RunCommitted();
    return absl::OkStatus();
  }

  absl::StatusOr<std::string> Get(Family f, std::string_view key) override {
    std::string value;
    rocksdb::Status s =
        db_->Get(rocksdb::ReadOptions(), cfs_[static_cast<size_t>(f)], rocksdb::Slice(key.data(), key.size()), &value);
    if (!s.ok()) return FromRocks(s, "get");
    return value;
  }

  absl::Status Scan(Family f, std::string_view start, std::string_view limit, const ScanFn& fn) override {
    rocksdb::ReadOptions ro;
    rocksdb::Slice upper(limit.data(), limit.size());
    if (!limit.empty()) ro.iterate_upper_bound = &upper;
    std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(ro, cfs_[static_cast<size_t>(f)]));
    for (it->Seek(rocksdb::Slice(start.data(), start.size())); it->Valid(); it->Next()) {
      rocksdb::Slice k = it->key(), v = it->value();
      if (!fn(std::string_view(k.data(), k.size()), std::string_view(v.data(), v.size()))) break;
    }
    return FromRocks(it->status(), "scan");
  }

 private:
  std::unique_ptr<rocksdb::DB> db_;
  std::vector<rocksdb::ColumnFamilyHandle*> cfs_;
  std::atomic<bool> needs_resume_{false};
  std::string dir_;
  uint64_t min_free_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<KvStore>> OpenRocksKvStore(const std::string& dir, const RocksOptions& opts) {
  // Created here so RocksDB does not log a missing directory as an error.
  if (mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) {
    return absl::UnavailableError("cannot create " + dir + ": " + std::strerror(errno));
  }
  rocksdb::Options options;
  options.create_if_missing = true;
  options.create_missing_column_families = true;
  options.max_background_jobs = 2;
  options.db_write_buffer_size = opts.write_buffer_bytes;
  options.max_open_files = 512;  // well under the process limit of 20,000 fds
  // No fallocate preallocation: on a nearly full disk a failed preallocation
  // leaves RocksDB's WAL writer in an error state it cannot close cleanly.
  options.allow_fallocate = false;
  options.info_log = std::make_shared<RocksLogger>();
  options.info_log_level = rocksdb::InfoLogLevel::WARN_LEVEL;
  rocksdb::BlockBasedTableOptions table;
  table.block_cache = rocksdb::NewLRUCache(opts.block_cache_bytes);
  table.filter_policy.reset(rocksdb::NewBloomFilterPolicy(10));
  rocksdb::ColumnFamilyOptions cf_opts(options);
  cf_opts.table_factory.reset(rocksdb::NewBlockBasedTableFactory(table));
  std::vector<rocksdb::ColumnFamilyDescriptor> descs;
  for (size_t i = 0; i < static_cast<size_t>(Family::kCount); ++i) {
    std::string name = i == 0 ? rocksdb::kDefaultColumnFamilyName : std::string(FamilyName(static_cast<Family>(i)));
    rocksdb::ColumnFamilyOptions o = cf_opts;
    if (static_cast<Family>(i) == Family::kFirmwareChunks) {
      // Firmware images: 64 KiB values written once, read by offset. Kept in
      // blob files, so compaction moves only the keys (doc/storage-format.md).
      o.enable_blob_files = true;
      o.min_blob_size = 4096;
      o.enable_blob_garbage_collection = true;
    }
    descs.emplace_back(name, o);
  }
  std::vector<rocksdb::ColumnFamilyHandle*> handles;
  rocksdb::DB* raw = nullptr;
  rocksdb::Status s = rocksdb::DB::Open(rocksdb::DBOptions(options), dir, descs, &handles, &raw);
  if (!s.ok()) return FromRocks(s, "open " + dir);
  return std::unique_ptr<KvStore>(
      new RocksKvStore(std::unique_ptr<rocksdb::DB>(raw), std::move(handles), dir, opts.min_free_bytes));
}

}  // namespace fmq::storage
