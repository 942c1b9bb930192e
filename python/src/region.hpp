#pragma once

// ferry.Region: a registered or allocated block and the Python memory
// behind it. Deregistering waits for no one: a region whose transfers are
// still in flight when it is dropped keeps its memory held by its backend
// until they end or the backend closes.
#include "buffers.hpp"

#include <ferry/ferry.hpp>

#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace ferry_python {

/// What a region needs of its backend, whatever the backend's policy.
class backend_core {
public:
    virtual ~backend_core() = default;
    /// ferry's deregister_memory: throws ferry::error (busy while in use).
    virtual void deregister(ferry::region& r) = 0;
    [[nodiscard]] virtual bool open() const noexcept = 0;

    /// Keeps memory whose region was dropped while transfers used it.
    void park(std::unique_ptr<held_memory> m) {
        std::lock_guard lock(mutex_);
        parked_.push_back(std::move(m));
    }

protected:
    // Once the backend is gone, no transfer can use parked memory.
    void release_parked() {
        std::vector<std::unique_ptr<held_memory>> gone;
        std::lock_guard lock(mutex_);
        gone.swap(parked_);
    }

private:
    std::mutex mutex_;
    std::vector<std::unique_ptr<held_memory>> parked_;
};

struct py_region {
    ferry::region r;
    std::unique_ptr<held_memory> held;  // null for memory the backend allocated
    bool host = true;                   // the process can read and write it
    std::shared_ptr<backend_core> owner;
    std::size_t exports = 0;  // live buffer-protocol views (memoryview, numpy) of it

    py_region() = default;
    py_region(const py_region&) = delete;
    py_region& operator=(const py_region&) = delete;
    ~py_region() { drop(); }

    /// Region.close(): deregisters, or raises BusyError while transfers use it.
    void close() {
        if (!r) return;
        // A view would outlive memory that the backend allocated.
        if (exports > 0)
            throw ferry::error(ferry::status::busy, "Region.close: " + std::to_string(exports) +
                                                        " memoryview or numpy view(s) of it are alive; drop them first");
        if (owner && owner->open()) owner->deregister(r);
        else r.reset();
        held.reset();
    }

    // Garbage collection: never raises; memory in use is parked.
    void drop() noexcept {
        if (!r) return;
        try {
            close();
        } catch (...) {
            r.reset();
            try {
                if (held && owner) owner->park(std::move(held));
            } catch (...) {
                // Out of memory to park it in: released with the region below.
            }
            held.reset();
        }
    }
};

}  // namespace ferry_python
