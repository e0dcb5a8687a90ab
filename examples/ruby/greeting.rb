def greeting(buckets)
  "hello from greeting.rb, #{buckets} buckets"
end
