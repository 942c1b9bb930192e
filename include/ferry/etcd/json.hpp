#pragma once

// The little JSON that etcd's gateway speaks: a strict reader into a small
// tree and the string escaping the requests need, plus base64, in which the
// gateway carries keys and values. Enough for the fields ferry reads, not a
// general JSON library: numbers are kept as their text (etcd writes int64s
// as strings anyway), and anything malformed throws.

#include <ferry/status.hpp>
#include <ferry/version.hpp>

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

FERRY_NAMESPACE_BEGIN
namespace detail {

struct json_value {
    enum class kind { null, boolean, number, string, array, object };
    kind type = kind::null;
    bool flag = false;
    std::string text;  // string contents, or a number as written
    std::vector<json_value> items;
    std::map<std::string, json_value, std::less<>> members;

    /// The member `key` of an object, or nullptr (also for a non-object).
    [[nodiscard]] const json_value* find(std::string_view key) const {
        if (type != kind::object) return nullptr;
        auto it = members.find(key);
        return it == members.end() ? nullptr : &it->second;
    }
};

class json_reader {
public:
    explicit json_reader(std::string_view in) : in_(in) {}

    [[nodiscard]] json_value parse() {
        json_value v = value(0);
        skip_space();
        if (pos_ != in_.size()) fail("trailing characters");
        return v;
    }

private:
    // Deep enough for any gateway reply; a bound so that hostile input cannot
    // exhaust the stack.
    static constexpr int max_depth = 32;

    [[noreturn]] void fail(const char* why) const {
        throw error(status::invalid_argument, std::string("etcd: malformed JSON reply: ") + why + " at offset " +
                                                  std::to_string(pos_));
    }
    void skip_space() {
        while (pos_ < in_.size() && (in_[pos_] == ' ' || in_[pos_] == '\t' || in_[pos_] == '\n' || in_[pos_] == '\r'))
            ++pos_;
    }
    char peek() {
        skip_space();
        if (pos_ >= in_.size()) fail("unexpected end");
        return in_[pos_];
    }
    void expect_word(std::string_view w) {
        if (in_.substr(pos_, w.size()) != w) fail("unknown literal");
        pos_ += w.size();
    }

    json_value value(int depth) {
        if (depth > max_depth) fail("nested too deeply");
        json_value v;
        const char c = peek();
        if (c == '{') {
            v.type = json_value::kind::object;
            ++pos_;
            if (peek() == '}') {
                ++pos_;
                return v;
            }
            for (;;) {
                if (peek() != '"') fail("expected a member name");
                std::string key = string_body();
                if (peek() != ':') fail("expected ':'");
                ++pos_;
                v.members.insert_or_assign(std::move(key), value(depth + 1));
                const char d = peek();
                ++pos_;
                if (d == '}') return v;
                if (d != ',') fail("expected ',' or '}'");
            }
        }
        if (c == '[') {
            v.type = json_value::kind::array;
            ++pos_;
            if (peek() == ']') {
                ++pos_;
                return v;
            }
            for (;;) {
                v.items.push_back(value(depth + 1));
                const char d = peek();
                ++pos_;
                if (d == ']') return v;
                if (d != ',') fail("expected ',' or ']'");
            }
        }
        if (c == '"') {
            v.type = json_value::kind::string;
            v.text = string_body();
            return v;
        }
        if (c == 't') {
            expect_word("true");
            v.type = json_value::kind::boolean;
            v.flag = true;
            return v;
        }
        if (c == 'f') {
            expect_word("false");
            v.type = json_value::kind::boolean;
            return v;
        }
        if (c == 'n') {
            expect_word("null");
            return v;
        }
        if (c == '-' || (c >= '0' && c <= '9')) {
            const std::size_t start = pos_;
            if (in_[pos_] == '-') ++pos_;
            auto digits = [&] {
                const std::size_t from = pos_;
                while (pos_ < in_.size() && in_[pos_] >= '0' && in_[pos_] <= '9') ++pos_;
                if (pos_ == from) fail("expected a digit");
            };
            digits();
            if (pos_ < in_.size() && in_[pos_] == '.') {
                ++pos_;
                digits();
            }
            if (pos_ < in_.size() && (in_[pos_] == 'e' || in_[pos_] == 'E')) {
                ++pos_;
                if (pos_ < in_.size() && (in_[pos_] == '+' || in_[pos_] == '-')) ++pos_;
                digits();
            }
            v.type = json_value::kind::number;
            v.text = std::string(in_.substr(start, pos_ - start));
            return v;
        }
        fail("unexpected character");
    }

    unsigned hex4() {
        if (in_.size() - pos_ < 4) fail("short \\u escape");
        unsigned u = 0;
        for (int i = 0; i < 4; ++i) {
            const char h = in_[pos_++];
            u <<= 4;
            if (h >= '0' && h <= '9') u |= static_cast<unsigned>(h - '0');
            else if (h >= 'a' && h <= 'f') u |= static_cast<unsigned>(h - 'a' + 10);
            else if (h >= 'A' && h <= 'F') u |= static_cast<unsigned>(h - 'A' + 10);
            else fail("bad \\u escape");
        }
        return u;
    }

    void put_utf8(std::string& out, unsigned cp) {
        if (cp < 0x80) {
            out += static_cast<char>(cp);
        } else if (cp < 0x800) {
            out += static_cast<char>(0xC0 | (cp >> 6));
            out += static_cast<char>(0x80 | (cp & 0x3F));
        } else if (cp < 0x10000) {
            out += static_cast<char>(0xE0 | (cp >> 12));
            out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
            out += static_cast<char>(0x80 | (cp & 0x3F));
        } else {
            out += static_cast<char>(0xF0 | (cp >> 18));
            out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
            out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
            out += static_cast<char>(0x80 | (cp & 0x3F));
        }
    }

    // At the opening quote; returns the unescaped contents.
    std::string string_body() {
        ++pos_;
        std::string out;
        for (;;) {
            if (pos_ >= in_.size()) fail("unterminated string");
            const char c = in_[pos_++];
            if (c == '"') return out;
            if (static_cast<unsigned char>(c) < 0x20) fail("control character in a string");
            if (c != '\\') {
                out += c;
                continue;
            }
            if (pos_ >= in_.size()) fail("unterminated escape");
            const char e = in_[pos_++];
            switch (e) {
                case '"': out += '"'; break;
                case '\\': out += '\\'; break;
                case '/': out += '/'; break;
                case 'b': out += '\b'; break;
                case 'f': out += '\f'; break;
                case 'n': out += '\n'; break;
                case 'r': out += '\r'; break;
                case 't': out += '\t'; break;
                case 'u': {
                    unsigned cp = hex4();
                    if (cp >= 0xD800 && cp < 0xDC00) {
                        if (in_.substr(pos_, 2) != "\\u") fail("lone surrogate");
                        pos_ += 2;
                        const unsigned lo = hex4();
                        if (lo < 0xDC00 || lo >= 0xE000) fail("bad surrogate pair");
                        cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                    } else if (cp >= 0xDC00 && cp < 0xE000) {
                        fail("lone surrogate");
                    }
                    put_utf8(out, cp);
                    break;
                }
                default: fail("unknown escape");
            }
        }
    }

    std::string_view in_;
    std::size_t pos_ = 0;
};

[[nodiscard]] inline json_value parse_json(std::string_view in) { return json_reader(in).parse(); }

/// `s` as a JSON string literal, quotes included.
[[nodiscard]] inline std::string json_quote(std::string_view s) {
    static constexpr char hex[] = "0123456789abcdef";
    std::string out = "\"";
    for (const char c : s) {
        const auto u = static_cast<unsigned char>(c);
        if (c == '"' || c == '\\') {
            out += '\\';
            out += c;
        } else if (u < 0x20) {
            out += "\\u00";
            out += hex[u >> 4];
            out += hex[u & 0xF];
        } else {
            out += c;
        }
    }
    out += '"';
    return out;
}

[[nodiscard]] inline std::string base64_encode(std::string_view in) {
    static constexpr char table[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    std::string out;
    out.reserve((in.size() + 2) / 3 * 4);
    std::size_t i = 0;
    for (; i + 3 <= in.size(); i += 3) {
        const std::uint32_t w = (std::uint32_t(static_cast<unsigned char>(in[i])) << 16) |
                                (std::uint32_t(static_cast<unsigned char>(in[i + 1])) << 8) |
                                std::uint32_t(static_cast<unsigned char>(in[i + 2]));
        out += table[(w >> 18) & 63];
        out += table[(w >> 12) & 63];
        out += table[(w >> 6) & 63];
        out += table[w & 63];
    }
    if (const std::size_t rest = in.size() - i; rest > 0) {
        std::uint32_t w = std::uint32_t(static_cast<unsigned char>(in[i])) << 16;
        if (rest == 2) w |= std::uint32_t(static_cast<unsigned char>(in[i + 1])) << 8;
        out += table[(w >> 18) & 63];
        out += table[(w >> 12) & 63];
        out += rest == 2 ? table[(w >> 6) & 63] : '=';
        out += '=';
    }
    return out;
}

/// The bytes `in` encodes (standard alphabet, padded), or nullopt.
[[nodiscard]] inline std::optional<std::string> base64_decode(std::string_view in) {
    if (in.size() % 4 != 0) return std::nullopt;
    auto sextet = [](char c) -> int {
        if (c >= 'A' && c <= 'Z') return c - 'A';
        if (c >= 'a' && c <= 'z') return c - 'a' + 26;
        if (c >= '0' && c <= '9') return c - '0' + 52;
        if (c == '+') return 62;
        if (c == '/') return 63;
        return -1;
    };
    std::string out;
    out.reserve(in.size() / 4 * 3);
    for (std::size_t i = 0; i < in.size(); i += 4) {
        const bool last = i + 4 == in.size();
        const int pad = last ? (in[i + 3] == '=') + (in[i + 2] == '=') : 0;
        if (pad == 1 && in[i + 2] == '=') return std::nullopt;
        std::uint32_t w = 0;
        for (int k = 0; k < 4; ++k) {
            const int s = k >= 4 - pad ? 0 : sextet(in[i + static_cast<std::size_t>(k)]);
            if (s < 0) return std::nullopt;
            w = (w << 6) | static_cast<std::uint32_t>(s);
        }
        out += static_cast<char>((w >> 16) & 0xFF);
        if (pad < 2) out += static_cast<char>((w >> 8) & 0xFF);
        if (pad < 1) out += static_cast<char>(w & 0xFF);
    }
    return out;
}

}  // namespace detail
FERRY_NAMESPACE_END
