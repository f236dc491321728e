// Replays fuzz inputs through LLVMFuzzerTestOneInput without libFuzzer, so
// the seed corpus runs under gcc in the normal test suite. Arguments are
// files or directories; prints "replayed N inputs". An argument that holds
// no input fails the run: an emptied corpus must not pass as tested.
#include <dirent.h>
#include <sys/stat.h>

#include <cstdint>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

namespace {

int RunFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  LLVMFuzzerTestOneInput(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
  return 1;
}

int Run(const std::string& path) {
  struct stat st;
  if (stat(path.c_str(), &st) != 0) {
    std::fprintf(stderr, "no such input: %s\n", path.c_str());
    return -1;
  }
  if (!S_ISDIR(st.st_mode)) return RunFile(path);
  int n = 0;
  DIR* d = opendir(path.c_str());
  while (dirent* e = readdir(d)) {
    std::string name = e->d_name;
    if (name == "." || name == "..") continue;
    int r = Run(path + "/" + name);
    if (r < 0) return r;
    n += r;
  }
  closedir(d);
  return n;
}

}  // namespace

int main(int argc, char** argv) {
  int total = 0;
  for (int i = 1; i < argc; ++i) {
    int n = Run(argv[i]);
    if (n < 0) return 2;
    if (n == 0) {
      std::fprintf(stderr, "empty corpus: %s\n", argv[i]);
      return 1;
    }
    total += n;
  }
  std::printf("replayed %d inputs\n", total);
  return total > 0 ? 0 : 1;
}
