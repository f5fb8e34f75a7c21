// Minimal JSON reader for the export manifest (objects, arrays, strings, numbers, bools,
// null). Errors throw std::runtime_error with the byte offset.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace we {

struct Json {
  enum class Type { Null, Bool, Number, String, Array, Object };
  Type type = Type::Null;
  bool b = false;
  double num = 0.0;
  bool is_int = false;
  std::string str;
  std::vector<Json> arr;
  std::map<std::string, Json> obj;

  bool is_null() const { return type == Type::Null; }
  bool has(const std::string& k) const { return type == Type::Object && obj.count(k) > 0; }
  const Json& at(const std::string& k) const {
    if (type != Type::Object) throw std::runtime_error("JSON: expected an object when reading field '" + k + "'");
    auto it = obj.find(k);
    if (it == obj.end()) throw std::runtime_error("JSON: missing field '" + k + "'");
    return it->second;
  }
  const Json& at(size_t i) const {
    if (type != Type::Array || i >= arr.size()) throw std::runtime_error("JSON: array index out of range");
    return arr[i];
  }
  double number() const {
    if (type != Type::Number) throw std::runtime_error("JSON: expected a number");
    return num;
  }
  int64_t integer() const {
    if (type != Type::Number || !is_int) throw std::runtime_error("JSON: expected an integer");
    return static_cast<int64_t>(num);
  }
  const std::string& string() const {
    if (type != Type::String) throw std::runtime_error("JSON: expected a string");
    return str;
  }
  const std::vector<Json>& array() const {
    if (type != Type::Array) throw std::runtime_error("JSON: expected an array");
    return arr;
  }

  static Json parse(const std::string& text);
};

namespace detail {

class Parser {
 public:
  explicit Parser(const std::string& s) : s_(s) {}
  Json parse_all() {
    Json v = value();
    ws();
    if (i_ != s_.size()) fail("trailing characters");
    return v;
  }

 private:
  const std::string& s_;
  size_t i_ = 0;

  [[noreturn]] void fail(const std::string& what) const {
    throw std::runtime_error("invalid JSON at byte " + std::to_string(i_) + ": " + what);
  }
  void ws() {
    while (i_ < s_.size() && (s_[i_] == ' ' || s_[i_] == '\n' || s_[i_] == '\r' || s_[i_] == '\t')) ++i_;
  }
  char peek() {
    ws();
    if (i_ >= s_.size()) fail("unexpected end");
    return s_[i_];
  }
  void expect(const char* lit) {
    for (const char* p = lit; *p; ++p, ++i_)
      if (i_ >= s_.size() || s_[i_] != *p) fail(std::string("expected '") + lit + "'");
  }
  Json value() {
    char c = peek();
    Json v;
    if (c == '{') {
      v.type = Json::Type::Object;
      ++i_;
      if (peek() == '}') { ++i_; return v; }
      while (true) {
        if (peek() != '"') fail("expected a key string");
        std::string k = string_lit();
        if (peek() != ':') fail("expected ':'");
        ++i_;
        v.obj[k] = value();
        char d = peek();
        ++i_;
        if (d == '}') break;
        if (d != ',') fail("expected ',' or '}'");
      }
    } else if (c == '[') {
      v.type = Json::Type::Array;
      ++i_;
      if (peek() == ']') { ++i_; return v; }
      while (true) {
        v.arr.push_back(value());
        char d = peek();
        ++i_;
        if (d == ']') break;
        if (d != ',') fail("expected ',' or ']'");
      }
    } else if (c == '"') {
      v.type = Json::Type::String;
      v.str = string_lit();
    } else if (c == 't') {
      expect("true"); v.type = Json::Type::Bool; v.b = true;
    } else if (c == 'f') {
      expect("false"); v.type = Json::Type::Bool; v.b = false;
    } else if (c == 'n') {
      expect("null");
    } else {
      size_t start = i_;
      bool is_int = true;
      if (s_[i_] == '-') ++i_;
      while (i_ < s_.size() && ((s_[i_] >= '0' && s_[i_] <= '9') || s_[i_] == '.' || s_[i_] == 'e' || s_[i_] == 'E' ||
                                s_[i_] == '+' || s_[i_] == '-')) {
        if (s_[i_] == '.' || s_[i_] == 'e' || s_[i_] == 'E') is_int = false;
        ++i_;
      }
      if (start == i_) fail("unexpected character");
      v.type = Json::Type::Number;
      v.is_int = is_int;
      try {
        v.num = std::stod(s_.substr(start, i_ - start));  // shortest round-trip reprs parse exactly
      } catch (...) {
        fail("bad number");
      }
    }
    return v;
  }
  static void utf8(std::string& out, uint32_t cp) {
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
  uint32_t hex4() {
    if (i_ + 4 > s_.size()) fail("short \\u escape");
    uint32_t cp = std::stoul(s_.substr(i_, 4), nullptr, 16);
    i_ += 4;
    return cp;
  }
  std::string string_lit() {
    ++i_;  // opening quote
    std::string out;
    while (true) {
      if (i_ >= s_.size()) fail("unterminated string");
      char c = s_[i_++];
      if (c == '"') break;
      if (c != '\\') { out += c; continue; }
      if (i_ >= s_.size()) fail("bad escape");
      char e = s_[i_++];
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
          uint32_t cp = hex4();
          if (cp >= 0xD800 && cp < 0xDC00 && i_ + 6 <= s_.size() && s_[i_] == '\\' && s_[i_ + 1] == 'u') {
            i_ += 2;
            uint32_t lo = hex4();
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
          }
          utf8(out, cp);
          break;
        }
        default: fail("bad escape");
      }
    }
    return out;
  }
};

}  // namespace detail

inline Json Json::parse(const std::string& text) { return detail::Parser(text).parse_all(); }

}  // namespace we
