# A Ruby program with a slow start-up, then the file you edit.
#
#   cargo xtask run -- ruby examples/ruby/main.rb   # edit examples/ruby/greeting.rb
started = Process.clock_gettime(Process::CLOCK_MONOTONIC)
# The start-up: libraries, and data built once (a word index).
require "json"
require "set"
require "erb"
require "optparse"
require "time"
index = Hash.new { |h, k| h[k] = [] }
2_000_000.times { |i| index[i % 997] << i }
$stdout.sync = true # what is printed before the checkpoint is printed once
puts format("start-up: %.2f s", Process.clock_gettime(Process::CLOCK_MONOTONIC) - started)

require_relative "greeting" # the file you edit
puts greeting(index.size)
