// Writes the fuzzers' seed corpus (tests/fuzz/corpus/) from the real encoder:
// the metadata blobs that real backends publish (no region; one user region
// over TCP; one allocated region, shared memory with its 12-byte handle; two
// user regions and one allocated region over shared memory; a CUDA region
// with its IPC export), and notification inputs in ferry-fuzz-notif's format.
//
// tests/fuzz/corpus/README.md has the commands that build and run it.
#include <ferry/detail/metadata.hpp>
#include <ferry/ferry.hpp>

#include <cstddef>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace {

void write_file(const std::filesystem::path& path, const void* data, std::size_t size) {
    std::filesystem::create_directories(path.parent_path());
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(static_cast<const char*>(data), static_cast<std::streamsize>(size));
    if (!out) throw std::runtime_error("cannot write " + path.string());
    std::printf("%s: %zu bytes\n", path.c_str(), size);
}

void write_blob(const std::filesystem::path& path, const std::vector<std::byte>& blob,
                std::size_t host_handles = 0) {
    const auto md = ferry::detail::decode_metadata(blob);  // what the fuzzer starts from must decode
    std::size_t found = 0;
    for (const auto& r : md.regions)
        if (r.kind == ferry::detail::memory_kind_code::host && !r.ipc_handle.empty()) ++found;
    // Allocated host memory is published with its shared-memory handle,
    // unless this kernel has no memfd: such a seed would miss the handle.
    if (found != host_handles)
        throw std::runtime_error(path.string() + ": " + std::to_string(found) + " host region(s) with a handle, not " +
                                 std::to_string(host_handles));
    write_file(path, blob.data(), blob.size());
}

ferry::ucx_config config(std::string name, std::string tls) {
    ferry::ucx_config cfg;
    cfg.name = std::move(name);
    cfg.ucx_options = {{"TLS", std::move(tls)}};
    return cfg;
}

// ferry-fuzz-notif's input: byte 0 picks the header length (modulo
// size - 1), byte 1 the message limit in units of 64 bytes, then the header
// (the sender's name) and the payload (the message).
std::string notif_input(std::string_view sender, std::string_view message, unsigned limit_64) {
    std::string in;
    in += static_cast<char>(sender.size());
    in += static_cast<char>(limit_64);
    in += sender;
    in += message;
    return in;
}

}  // namespace

int main(int argc, char** argv) try {
    if (argc != 2) {
        std::fprintf(stderr, "usage: %s CORPUS_DIR (tests/fuzz/corpus)\n", argv[0]);
        return 2;
    }
    const std::filesystem::path dir = argv[1];

    {
        ferry::ucx_backend<> b(config("seed-empty", "shm"));
        write_blob(dir / "metadata" / "no-regions", b.local_metadata());
    }
    {
        ferry::ucx_backend<> b(config("prefill-0", "tcp"));
        std::vector<std::byte> user(4096);
        ferry::region r = b.register_memory(user.data(), user.size());
        write_blob(dir / "metadata" / "one-user-region-tcp", b.local_metadata());
    }
    {
        ferry::ucx_backend<> b(config("shared-0", "shm"));
        ferry::region r = b.allocate(4096);
        write_blob(dir / "metadata" / "one-shared-region-shm", b.local_metadata(), 1);
    }
    {
        ferry::ucx_backend<> b(config("decode-0", "shm"));
        std::vector<std::byte> user_a(4096);
        std::vector<std::byte> user_b(100'003);
        ferry::region a = b.register_memory(user_a.data(), user_a.size());
        ferry::region c = b.register_memory(user_b.data(), user_b.size());
        ferry::region d = b.allocate(64 * 1024);
        write_blob(dir / "metadata" / "three-regions-shm", b.local_metadata(), 1);
    }

    {
        // What a memory::cuda backend publishes for GPU memory: a CUDA region
        // with an IPC handle, where it sits in its allocation, and how large
        // that is. Written with the encoder, since no GPU is needed for it.
        ferry::ucx_backend<> b(config("decode-gpu-0", "shm"));
        const auto real = b.local_metadata();
        auto md = ferry::detail::decode_metadata(real);
        const std::vector<std::byte> rkey(40, std::byte{0x5C}), handle(64, std::byte{0xC3});
        ferry::detail::region_record gpu;
        gpu.addr = 0x7F2000001000;
        gpu.len = 1 << 20;
        gpu.dev = 0;
        gpu.rkey = rkey;
        gpu.kind = ferry::detail::memory_kind_code::cuda;
        gpu.ipc_handle = handle;
        gpu.ipc_offset = 4096;
        gpu.ipc_alloc_size = 2 << 20;
        md.regions.push_back(gpu);
        write_blob(dir / "metadata" / "cuda-region", ferry::detail::encode_metadata(md));
    }

    {
        // A real blob carries this process's start time as an extension
        // after the regions; the seeds above do too when they are written
        // again, this one was added with it.
        ferry::ucx_backend<> b(config("restarted-0", "shm"));
        std::vector<std::byte> user(4096);
        ferry::region r = b.register_memory(user.data(), user.size());
        const auto blob = b.local_metadata();
        if (ferry::detail::decode_metadata(blob).start_time == 0)
            throw std::runtime_error("no process start time in a real blob (no /proc?)");
        write_blob(dir / "metadata" / "start-time", blob);
    }

    const std::string with_message = notif_input("prefill-0", "layer 7 ready", 1);
    write_file(dir / "notif" / "with-message", with_message.data(), with_message.size());
    const std::string empty_message = notif_input("decode-0", "", 0);
    write_file(dir / "notif" / "empty-message", empty_message.data(), empty_message.size());
    return 0;
} catch (const std::exception& e) {
    std::fprintf(stderr, "ferry-fuzz-seeds: %s\n", e.what());
    return 1;
}
