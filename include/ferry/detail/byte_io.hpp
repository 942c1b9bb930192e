#pragma once

#include <ferry/status.hpp>
#include <ferry/version.hpp>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

FERRY_NAMESPACE_BEGIN
namespace detail {

// Little-endian fixed-width encoding, whatever the host's byte order, so that
// a blob means the same thing on every machine that reads it.
class byte_writer {
public:
    explicit byte_writer(std::vector<std::byte>& out) : out_(out) {}

    template <class U>
    void put(U value) {
        static_assert(std::is_unsigned_v<U>);
        for (std::size_t i = 0; i < sizeof(U); ++i)
            out_.push_back(static_cast<std::byte>((value >> (8 * i)) & 0xFFU));
    }

    void put_bytes(std::span<const std::byte> bytes) { out_.insert(out_.end(), bytes.begin(), bytes.end()); }

    void put_bytes(std::string_view s) { put_bytes(std::as_bytes(std::span(s.data(), s.size()))); }

    template <class U>
    void patch(std::size_t offset, U value) {
        for (std::size_t i = 0; i < sizeof(U); ++i)
            out_[offset + i] = static_cast<std::byte>((value >> (8 * i)) & 0xFFU);
    }

    [[nodiscard]] std::size_t size() const noexcept { return out_.size(); }

private:
    std::vector<std::byte>& out_;
};

// Reads never go past the end: every length is checked against what remains
// before it is used, and failures name the field and its offset.
class byte_reader {
public:
    byte_reader(std::span<const std::byte> in, std::string_view what) : in_(in), what_(what) {}

    template <class U>
    U get(std::string_view field) {
        static_assert(std::is_unsigned_v<U>);
        field_start_ = pos_;
        require(sizeof(U), field);
        U value = 0;
        for (std::size_t i = 0; i < sizeof(U); ++i)
            value |= static_cast<U>(static_cast<U>(in_[pos_ + i]) << (8 * i));
        pos_ += sizeof(U);
        return value;
    }

    std::span<const std::byte> get_bytes(std::size_t n, std::string_view field) {
        field_start_ = pos_;
        require(n, field);
        auto out = in_.subspan(pos_, n);
        pos_ += n;
        return out;
    }

    /// Fails unless every byte has been read.
    void expect_end() {
        field_start_ = pos_;
        if (remaining() != 0) fail("end", std::to_string(remaining()) + " unexpected trailing bytes");
    }

    [[nodiscard]] std::size_t offset() const noexcept { return pos_; }
    [[nodiscard]] std::size_t remaining() const noexcept { return in_.size() - pos_; }

    /// Reports a problem with the field read last, at the offset where it starts.
    [[noreturn]] void fail(std::string_view field, std::string_view problem) const {
        throw error(status::invalid_argument, std::string(what_) + ": " + std::string(field) + " at offset " +
                                                  std::to_string(field_start_) + ": " + std::string(problem));
    }

private:
    void require(std::size_t n, std::string_view field) const {
        if (n > remaining())
            fail(field, "needs " + std::to_string(n) + " bytes but only " + std::to_string(remaining()) +
                            " remain (truncated)");
    }

    std::span<const std::byte> in_;
    std::string_view what_;
    std::size_t pos_ = 0;
    std::size_t field_start_ = 0;
};


}  // namespace detail
FERRY_NAMESPACE_END
