#pragma once

#include <ferry/desc.hpp>
#include <ferry/status.hpp>
#include <ferry/ucx/memory.hpp>
#include <ferry/version.hpp>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

FERRY_NAMESPACE_BEGIN

namespace detail {
template <class Traits>
class registration;
}  // namespace detail

/// A registered block of memory, owned by the caller. Destroying it (or
/// calling `reset`) deregisters it: it disappears from metadata published
/// afterwards, and transfers prepared over it fail with `not_registered` when
/// posted. A transfer still in flight keeps the registration (and memory that
/// the backend allocated) alive until UCX reports its completion.
class region {
public:
    region() = default;
    region(std::shared_ptr<detail::registry> reg, std::shared_ptr<detail::local_region> r)
        : registry_(std::move(reg)), region_(std::move(r)) {}
    region(region&& other) noexcept = default;
    region& operator=(region&& other) noexcept {
        if (this != &other) {
            reset();
            registry_ = std::move(other.registry_);
            region_ = std::move(other.region_);
        }
        return *this;
    }
    region(const region&) = delete;
    region& operator=(const region&) = delete;
    ~region() { reset(); }

    void reset() noexcept {
        if (region_) registry_->remove(region_.get());
        region_.reset();
        registry_.reset();
    }

    [[nodiscard]] explicit operator bool() const noexcept { return region_ != nullptr; }
    [[nodiscard]] void* data() const noexcept { return region_ ? region_->mem.base() : nullptr; }
    [[nodiscard]] std::size_t size() const noexcept { return region_ ? region_->mem.size() : 0; }
    [[nodiscard]] std::uint32_t dev() const noexcept { return region_ ? region_->dev : 0; }
    /// True for memory that the backend allocated through UCX.
    [[nodiscard]] bool allocated() const noexcept { return region_ && region_->allocated; }

    /// The whole region as a descriptor.
    [[nodiscard]] desc whole() const noexcept { return {reinterpret_cast<std::uintptr_t>(data()), size(), dev()}; }

    /// `len` bytes at `offset` as a descriptor; throws if they leave the region.
    [[nodiscard]] desc slice(std::size_t offset, std::size_t len) const {
        if (offset > size() || len > size() - offset)
            throw error(status::invalid_argument, "region::slice: [" + std::to_string(offset) + ", +" +
                                                      std::to_string(len) + ") leaves a region of " +
                                                      std::to_string(size()) + " bytes");
        return {reinterpret_cast<std::uintptr_t>(data()) + offset, len, dev()};
    }

private:
    template <class Traits>
    friend class detail::registration;  // deregister_memory

    std::shared_ptr<detail::registry> registry_;
    std::shared_ptr<detail::local_region> region_;
};

FERRY_NAMESPACE_END
